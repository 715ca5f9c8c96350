"""Seccomp profiles compiled with libseccomp (through ctypes) into classic BPF, in the parent.

Compiling before the fork means a bad profile is reported before any process exists, and the child
only has to hand the finished program to the kernel (``kernel.seccomp_set_filter``).

User notification (``SCMP_ACT_NOTIFY``, runtime-spec 1.1): the filter is loaded with
SECCOMP_FILTER_FLAG_NEW_LISTENER, the container process hands the notify fd to the runtime over its
channel, and the runtime sends it with the container process state (``process_state``) to the agent
listening on ``linux.seccomp.listenerPath`` (``send_to_listener``), as runc does.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
from functools import cache

from . import kernel as k
from .errors import ConfigError, SetupError, Unsupported
from .spec import Seccomp

_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_NOTIFY": 0x7FC00000,
}
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,
}
_SCMP_FLTATR_CTL_NNP = 3
NOTIFY = "SCMP_ACT_NOTIFY"
# flags the runtime adds itself (not settable in linux.seccomp.flags)
RUNTIME_FLAGS = {"SECCOMP_FILTER_FLAG_NEW_LISTENER": k.SECCOMP_FILTER_FLAG_NEW_LISTENER}
# the container process makes these between loading the filter and handing its notify fd over (the
# channel's sendmsg/send); notified, they would wait for an agent that can never get the fd (runc refuses
# "write" for its pipe the same way)
NOTIFY_REFUSED = ("sendmsg", "sendto", "write")
SECCOMP_FD_NAME = "seccompFd"  # runtime-spec's name of the fd in the container process state
LISTENER_TIMEOUT = 30.0


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@cache
def _lib() -> ctypes.CDLL:
    try:  # by its soname (libseccomp2's ABI): find_library would run `ldconfig -p` on every start
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise Unsupported(f"linux.seccomp: libseccomp is not available ({exc}); install libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


@cache
def notify_supported() -> bool:
    """Whether this kernel has seccomp user notification (SECCOMP_GET_NOTIF_SIZES answers)."""
    try:
        return k.seccomp_notif_sizes()[0] > 0
    except OSError:
        return False


def supported_actions() -> list[str]:
    """The actions ``compile_filter`` accepts on this host (``pyoci features``)."""
    return sorted(a for a in _ACTIONS if a != NOTIFY or notify_supported())


def _action(name: str, errno_ret: int | None, where: str) -> int:
    value = _ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        value |= (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    elif name == "SCMP_ACT_TRACE":
        value |= (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


def _arch_name(oci: str) -> str:
    return oci.removeprefix("SCMP_ARCH_").lower()


def compile_filter(profile: Seccomp) -> tuple[bytes, int]:
    """The BPF program (sock_filter array) and the seccomp(2) flags for ``profile``."""
    lib = _lib()
    notify = _check_notify(profile)
    default = _action(profile.default_action, profile.default_errno_ret, "linux.seccomp.defaultAction")
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ConfigError("linux.seccomp.defaultAction", "libseccomp refused the default action")
    try:
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)
        for i, arch in enumerate(profile.architectures):
            token = lib.seccomp_arch_resolve_name(_arch_name(arch).encode())
            if token == 0:
                raise ConfigError(f"linux.seccomp.architectures[{i}]", f"unknown architecture {arch!r}")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and -rc != errno.EEXIST:
                raise ConfigError(f"linux.seccomp.architectures[{i}]", f"cannot add {arch}: {os.strerror(-rc)}")
        _check_size(profile)
        for i, rule in enumerate(profile.syscalls):
            where = f"linux.seccomp.syscalls[{i}]"
            action = _action(rule.action, rule.errno_ret, where + ".action")
            if action == default:
                continue  # libseccomp refuses rules that repeat the default action; they change nothing
            groups = _arg_groups(rule.args)
            for name in rule.names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:
                    continue  # unknown on this kernel/arch: skipped, as runc does
                for group in groups:
                    cmps = (_ArgCmp * max(len(group), 1))(
                        *[_ArgCmp(a.index, _OPS[a.op], a.value, a.value_two) for a in group]
                    )
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), cmps)
                    if rc < 0:
                        raise ConfigError(where, f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")
        fd = os.memfd_create("pyoci-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise ConfigError("linux.seccomp", f"libseccomp could not export the filter: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        if size // 8 > BPF_MAXINSNS:
            raise ConfigError(
                "linux.seccomp", f"compiles to {size // 8} BPF instructions; the kernel loads at most {BPF_MAXINSNS}"
            )
    finally:
        lib.seccomp_release(ctx)
    flags = 0
    for flag in profile.flags:
        flags |= FLAGS[flag]
    if notify:
        # the kernel refuses TSYNC with NEW_LISTENER; the container process is single-threaded anyway
        flags = (flags & ~FLAGS["SECCOMP_FILTER_FLAG_TSYNC"]) | RUNTIME_FLAGS["SECCOMP_FILTER_FLAG_NEW_LISTENER"]
    return program, flags


def _check_notify(profile: Seccomp) -> bool:
    """Whether the profile notifies an agent; refuses what cannot work (runc's rules)."""
    if profile.default_action == NOTIFY:
        raise ConfigError(
            "linux.seccomp.defaultAction",
            "SCMP_ACT_NOTIFY cannot be the default action: the container process could not hand its notify fd "
            "to the runtime",
        )
    uses = False
    for i, rule in enumerate(profile.syscalls):
        if rule.action != NOTIFY:
            continue
        uses = True
        refused = sorted(set(rule.names) & set(NOTIFY_REFUSED))
        if refused:
            raise ConfigError(
                f"linux.seccomp.syscalls[{i}].action",
                f"SCMP_ACT_NOTIFY cannot be used for {', '.join(refused)}: the container process needs it to hand "
                "its notify fd to the runtime",
            )
    if not uses:
        return False
    if not profile.listener_path:
        raise ConfigError(
            "linux.seccomp.listenerPath",
            "must be set when an action is SCMP_ACT_NOTIFY (the unix socket of the agent that receives the notify fd)",
        )
    if not notify_supported():
        raise Unsupported("linux.seccomp: SCMP_ACT_NOTIFY: this kernel has no seccomp user notification")
    return True


def process_state(profile: Seccomp, pid: int, state: dict) -> dict:
    """The container process state (runtime-spec runtime.md) sent to the agent with the notify fd: ``pid``
    is the process that loaded the filter, ``state`` the container's state."""
    doc = {"ociVersion": state["ociVersion"], "fds": [SECCOMP_FD_NAME], "pid": pid, "state": state}
    if profile.listener_metadata:
        doc["metadata"] = profile.listener_metadata
    return doc


def send_to_listener(path: str, fd: int, doc: dict, timeout: float = LISTENER_TIMEOUT) -> None:
    """Connect to the agent's unix socket (SOCK_STREAM) and send ``doc`` as JSON with ``fd`` (SCM_RIGHTS),
    then close: the agent reads to EOF."""
    data = json.dumps(doc).encode()
    where = f"linux.seccomp.listenerPath {path}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise SetupError("connect to the seccomp agent", _errno(exc), where) from None
        try:
            sent = socket.send_fds(sock, [data], [fd])
            if sent < len(data):
                sock.sendall(data[sent:])
        except OSError as exc:
            raise SetupError("send the seccomp notify fd", _errno(exc), where) from None


def _errno(exc: OSError) -> int:
    return exc.errno or (errno.ETIMEDOUT if isinstance(exc, TimeoutError) else errno.EIO)


BPF_MAXINSNS = 4096  # the kernel's limit on one seccomp program
MAX_RULES = 8192  # (syscall, comparison group) pairs; libseccomp's rule merging is quadratic in them


def _check_size(profile: Seccomp) -> None:
    """Bound the work before libseccomp does it: a profile past MAX_RULES could not load anyway (docker's
    default profile is ~400), and would take minutes to compile."""
    total = 0
    for rule in profile.syscalls:
        total += len(rule.names) * len(_arg_groups(rule.args))
        if total > MAX_RULES:
            raise ConfigError(
                "linux.seccomp.syscalls",
                f"more than {MAX_RULES} rules (syscall names times argument groups); a seccomp program is limited "
                f"to {BPF_MAXINSNS} instructions",
            )


def _arg_groups(args):
    """libseccomp ANDs the comparisons of one rule but refuses two on the same argument: comparisons on
    a repeated argument become separate rules (OR), as runc does."""
    if not args:
        return [()]
    indexes = [a.index for a in args]
    if len(set(indexes)) == len(indexes):
        return [tuple(args)]
    return [(a,) for a in args]
