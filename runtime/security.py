"""Process credentials computed in the parent: capability masks, rlimit numbers, user and groups.

The child applies them with :func:`apply_credentials` in runc's order: bounding set, then the user
switch with capabilities kept, then capset and ambient capabilities.
"""

from __future__ import annotations

import errno
import os
import resource

from . import kernel as k
from .errors import SetupError
from .records import record
from .spec import CAP_NUMBER, Capabilities, Process

_RLIM_INFINITY = 2**64 - 1


@record
class CapSets:
    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: tuple[int, ...]
    missing: tuple[str, ...] = ()  # asked for, but the host cannot grant them (not in its bounding set)


def _mask(names: tuple[str, ...], allowed: int) -> int:
    value = 0
    for name in names:
        value |= 1 << CAP_NUMBER[name]
    return value & allowed


def host_bounding_set() -> int:
    """Capabilities this process can still hand out (its bounding set)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return (1 << (k.last_cap() + 1)) - 1


def cap_sets(caps: Capabilities | None, allowed: int) -> CapSets | None:
    """None means "leave capabilities alone". Capabilities the host cannot grant are dropped (a root
    without CAP_SYS_RESOURCE cannot give it), like runc ignores capabilities unknown to the kernel."""
    if caps is None:
        return None
    ambient = _mask(caps.ambient, allowed) & _mask(caps.inheritable, allowed) & _mask(caps.permitted, allowed)
    asked = {*caps.bounding, *caps.effective, *caps.permitted, *caps.inheritable, *caps.ambient}
    return CapSets(
        missing=tuple(sorted(name for name in asked if not allowed >> CAP_NUMBER[name] & 1)),
        bounding=_mask(caps.bounding, allowed),
        effective=_mask(caps.effective, allowed),
        permitted=_mask(caps.permitted, allowed),
        inheritable=_mask(caps.inheritable, allowed),
        ambient=tuple(i for i in range(64) if ambient >> i & 1),
    )


def rlimits(process: Process) -> tuple[tuple[int, int, int], ...]:
    out = []
    for rl in process.rlimits:
        number = getattr(resource, rl.type)
        out.append((number, _rlim(rl.soft), _rlim(rl.hard)))
    return tuple(out)


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value >= _RLIM_INFINITY else value


def apply_rlimits(limits: tuple[tuple[int, int, int], ...]) -> None:
    for number, soft, hard in limits:
        try:
            resource.setrlimit(number, (soft, hard))
        except (OSError, ValueError) as exc:
            err = getattr(exc, "errno", None) or errno.EPERM
            name = next((n for n in dir(resource) if n.startswith("RLIMIT_") and getattr(resource, n) == number), "")
            raise SetupError("set rlimit", err, f"{name} soft={soft} hard={hard}") from None


def apply_credentials(process: Process, caps: CapSets | None) -> None:
    user = process.user
    try:
        if caps is not None:
            k.prctl(k.PR_SET_KEEPCAPS, 1)
            for cap in range(k.last_cap() + 1):
                if not caps.bounding >> cap & 1:
                    k.prctl(k.PR_CAPBSET_DROP, cap)
    except OSError as exc:
        raise SetupError("drop bounding capabilities", exc.errno or errno.EIO) from None
    try:
        os.setgroups(list(user.additional_gids))
    except OSError as exc:
        if exc.errno != errno.EPERM or user.additional_gids:
            raise SetupError("setgroups", exc.errno or errno.EIO, str(list(user.additional_gids))) from None
    try:
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise SetupError("set user", exc.errno or errno.EIO, f"uid={user.uid} gid={user.gid}") from None
    if user.umask is not None:
        os.umask(user.umask)
    if caps is None:
        return
    try:
        k.prctl(k.PR_SET_KEEPCAPS, 0)
        k.capset(caps.effective, caps.permitted, caps.inheritable)
        for cap in caps.ambient:
            k.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_RAISE, cap)
    except OSError as exc:
        raise SetupError("set capabilities", exc.errno or errno.EIO) from None


def apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


def check_lsm(process: Process, source: str = "process") -> None:
    """An AppArmor profile or SELinux label the host cannot apply is an error, not something to ignore."""
    from .errors import Unsupported

    if process.apparmor_profile and not apparmor_enabled():
        raise Unsupported(
            f"{source}.apparmorProfile: AppArmor is not enabled on this host "
            f"(profile {process.apparmor_profile!r} cannot be applied)"
        )
    if process.selinux_label and not selinux_enabled():
        raise Unsupported(
            f"{source}.selinuxLabel: SELinux is not enabled on this host "
            f"(label {process.selinux_label!r} cannot be applied)"
        )


def apply_lsm_on_exec(process: Process) -> None:
    """Labels that take effect at execve: written just before it."""
    for value, paths in (
        (
            f"exec {process.apparmor_profile}" if process.apparmor_profile else "",
            ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"),
        ),
        (process.selinux_label, ("/proc/self/attr/exec",)),
    ):
        if not value:
            continue
        for path in paths:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SetupError("set security label", exc.errno or errno.EIO, f"{path}: {value}") from None
            try:
                if k.fs_type(fd) != k.PROC_SUPER_MAGIC:  # a bind mount over /proc: not the kernel's file
                    raise SetupError("set security label", errno.EXDEV, f"{path} is not on procfs")
                os.write(fd, value.encode())
            except OSError as exc:
                raise SetupError("set security label", exc.errno or errno.EIO, f"{path}: {value}") from None
            finally:
                os.close(fd)
            break
        else:
            raise SetupError("set security label", errno.ENOENT, f"no {' or '.join(paths)} to apply {value!r} with")
