"""The container's filesystem view, set up inside its new mount namespace (runs in the forked child).

Order, as runc does it: propagation of /, bind the rootfs onto itself, each ``mounts`` entry in order,
devices and /dev symlinks — then (after the createRuntime/createContainer hooks) pivot_root, then
readonly and masked paths and a read-only root. Every failure raises :class:`SetupError` with the step
and the path. Paths inside the rootfs are resolved without following symlinks out of it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from . import kernel as k
from .errors import SetupError
from .spec import Device, Mount, Spec

_FLAGS = {
    # option: (clear?, flag)
    "ro": (False, k.MS_RDONLY),
    "rw": (True, k.MS_RDONLY),
    "nosuid": (False, k.MS_NOSUID),
    "suid": (True, k.MS_NOSUID),
    "nodev": (False, k.MS_NODEV),
    "dev": (True, k.MS_NODEV),
    "noexec": (False, k.MS_NOEXEC),
    "exec": (True, k.MS_NOEXEC),
    "sync": (False, k.MS_SYNCHRONOUS),
    "async": (True, k.MS_SYNCHRONOUS),
    "dirsync": (False, k.MS_DIRSYNC),
    "remount": (False, k.MS_REMOUNT),
    "mand": (False, k.MS_MANDLOCK),
    "nomand": (True, k.MS_MANDLOCK),
    "noatime": (False, k.MS_NOATIME),
    "atime": (True, k.MS_NOATIME),
    "nodiratime": (False, k.MS_NODIRATIME),
    "diratime": (True, k.MS_NODIRATIME),
    "bind": (False, k.MS_BIND),
    "rbind": (False, k.MS_BIND | k.MS_REC),
    "relatime": (False, k.MS_RELATIME),
    "norelatime": (True, k.MS_RELATIME),
    "strictatime": (False, k.MS_STRICTATIME),
    "nostrictatime": (True, k.MS_STRICTATIME),
    "lazytime": (False, k.MS_LAZYTIME),
    "nolazytime": (True, k.MS_LAZYTIME),
    "nosymfollow": (False, k.MS_NOSYMFOLLOW),
    "symfollow": (True, k.MS_NOSYMFOLLOW),
}
_PROPAGATION = {
    "private": k.MS_PRIVATE,
    "rprivate": k.MS_PRIVATE | k.MS_REC,
    "shared": k.MS_SHARED,
    "rshared": k.MS_SHARED | k.MS_REC,
    "slave": k.MS_SLAVE,
    "rslave": k.MS_SLAVE | k.MS_REC,
    "unbindable": k.MS_UNBINDABLE,
    "runbindable": k.MS_UNBINDABLE | k.MS_REC,
}
_IGNORED_OPTIONS = {"tmpcopyup", "idmap", "ridmap", "defaults"}
# flags a bind remount must keep when the kernel has locked them (mounts from a less privileged namespace)
_STATVFS_LOCKED = (
    (os.ST_NOSUID, k.MS_NOSUID),
    (os.ST_NODEV, k.MS_NODEV),
    (os.ST_NOEXEC, k.MS_NOEXEC),
    (os.ST_RDONLY, k.MS_RDONLY),
)

DEFAULT_DEVICES = (
    Device("c", "/dev/null", 1, 3, 0o666, 0, 0),
    Device("c", "/dev/zero", 1, 5, 0o666, 0, 0),
    Device("c", "/dev/full", 1, 7, 0o666, 0, 0),
    Device("c", "/dev/random", 1, 8, 0o666, 0, 0),
    Device("c", "/dev/urandom", 1, 9, 0o666, 0, 0),
    Device("c", "/dev/tty", 5, 0, 0o666, 0, 0),
)
DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


@dataclass(frozen=True, slots=True)
class MountOptions:
    flags: int
    propagation: tuple[int, ...]
    data: str


def parse_options(options: tuple[str, ...]) -> MountOptions:
    flags = 0
    propagation = []
    data = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation.append(_PROPAGATION[opt])
        elif opt not in _IGNORED_OPTIONS:
            data.append(opt)
    return MountOptions(flags, tuple(propagation), ",".join(data))


def resolve_in_root(root: str, path: str) -> str:
    """``root``/``path`` with every symlink resolved as if ``root`` were ``/`` (never escaping it)."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        hops += 1
        if hops > 255:
            raise SetupError("resolve path", errno.ELOOP, f"{path} in {root}")
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return os.path.join(root, *resolved)


def _do(step: str, path: str, fn, *args) -> None:
    try:
        fn(*args)
    except OSError as exc:
        raise SetupError(step, exc.errno or errno.EIO, path) from None


def _ensure_target(target: str, as_file: bool) -> None:
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if as_file:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    else:
        os.mkdir(target, 0o755)


def _locked_flags(path: str) -> int:
    try:
        f = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(flag for st_flag, flag in _STATVFS_LOCKED if f & st_flag and flag != k.MS_RDONLY)


def prepare_root(rootfs: str, propagation: str) -> None:
    """Make / a slave (or what rootfsPropagation says), then bind the rootfs onto itself."""
    flag = _PROPAGATION.get(propagation, k.MS_SLAVE | k.MS_REC)
    _do("make / " + (propagation or "rslave"), "/", k.mount, None, "/", None, flag)
    # pivot_root needs the new root's parent mount not to be shared: make that one private.
    _do("make rootfs parent private", rootfs, _make_parent_private, rootfs)
    _do("bind rootfs", rootfs, k.mount, rootfs, rootfs, "bind", k.MS_BIND | k.MS_REC)


def _make_parent_private(rootfs: str) -> None:
    mount_point = _mount_point_of(rootfs)
    k.mount(None, mount_point, None, k.MS_PRIVATE)


def _mount_point_of(path: str) -> str:
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if (path + "/").startswith(target.rstrip("/") + "/") and len(target) > len(best):
                best = target
    return best


def mount_entry(rootfs: str, m: Mount, *, cgroup_paths: dict[str, str], cgroupns: bool, netns: bool) -> None:
    target = resolve_in_root(rootfs, m.destination)
    opts = parse_options(m.options)
    step = f"mount {m.type or 'bind'} on {m.destination}"
    is_bind = bool(opts.flags & k.MS_BIND) or m.type == "bind"
    try:
        if is_bind:
            _bind(m, target, opts)
        elif m.type == "cgroup":
            _mount_cgroup(target, opts, cgroup_paths, cgroupns)
        else:
            _ensure_target(target, as_file=False)
            try:
                k.mount(m.source or m.type, target, m.type, opts.flags, opts.data or None)
            except OSError as exc:
                if m.type == "sysfs" and exc.errno == errno.EPERM and not netns:
                    # sysfs can only be mounted in a new network namespace: bind the host's instead.
                    k.mount("/sys", target, "bind", k.MS_BIND | k.MS_REC)
                    k.mount(None, target, None, k.MS_BIND | k.MS_REMOUNT | k.MS_REC | (opts.flags & ~k.MS_REC))
                else:
                    raise
        for flag in opts.propagation:
            k.mount(None, target, None, flag)
    except OSError as exc:
        raise SetupError(step, exc.errno or errno.EIO, f"source {m.source!r}") from None


def _bind(m: Mount, target: str, opts: MountOptions) -> None:
    if not os.path.exists(m.source):
        raise OSError(errno.ENOENT, "bind source does not exist", m.source)
    _ensure_target(target, as_file=not os.path.isdir(m.source))
    flags = opts.flags | k.MS_BIND
    k.mount(m.source, target, "bind", flags & (k.MS_BIND | k.MS_REC))
    extra = flags & ~(k.MS_BIND | k.MS_REC | k.MS_REMOUNT)
    if extra:
        try:
            k.mount(None, target, None, k.MS_BIND | k.MS_REMOUNT | extra)
        except PermissionError:
            k.mount(None, target, None, k.MS_BIND | k.MS_REMOUNT | extra | _locked_flags(target))


def _mount_cgroup(target: str, opts: MountOptions, cgroup_paths: dict[str, str], cgroupns: bool) -> None:
    """cgroup v2 in a cgroup namespace: mount cgroup2. Otherwise (v1, hybrid): a tmpfs with the container's
    cgroup directory of each hierarchy bound under it, read-only when the mount is."""
    _ensure_target(target, as_file=False)
    flags = opts.flags & ~k.MS_BIND
    if list(cgroup_paths) == [""]:
        if cgroupns:
            k.mount("cgroup", target, "cgroup2", flags)
        else:
            k.mount(cgroup_paths[""], target, "bind", k.MS_BIND | k.MS_REC)
            k.mount(None, target, None, k.MS_BIND | k.MS_REMOUNT | flags)
        return
    k.mount("tmpfs", target, "tmpfs", flags & ~k.MS_RDONLY, "mode=755")
    by_dir: dict[str, list[str]] = {}
    for subsystem, path in cgroup_paths.items():
        by_dir.setdefault(path, []).append(subsystem.removeprefix("name=") or "unified")
    for path, names in sorted(by_dir.items()):
        sub = os.path.join(target, ",".join(sorted(names)))
        os.mkdir(sub, 0o755)
        k.mount(path, sub, "bind", k.MS_BIND | k.MS_REC)
        k.mount(None, sub, None, k.MS_BIND | k.MS_REMOUNT | flags | _locked_flags(sub))
    if flags & k.MS_RDONLY:
        k.mount(None, target, None, k.MS_REMOUNT | flags, "mode=755")


def create_devices(rootfs: str, devices: tuple[Device, ...], in_userns: bool) -> None:
    for dev in devices:
        target = resolve_in_root(rootfs, dev.path)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.unlink(target)
            if in_userns:
                # mknod is not allowed in a user namespace: bind the host's node instead.
                _ensure_target(target, as_file=True)
                k.mount(dev.path, target, "bind", k.MS_BIND)
                continue
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dev.type]
            mode = dev.file_mode if dev.file_mode is not None else 0o666
            os.mknod(target, kind | mode, os.makedev(dev.major, dev.minor))
            os.chmod(target, mode)  # mknod is subject to the umask
            os.chown(target, dev.uid or 0, dev.gid or 0)
        except OSError as exc:
            raise SetupError("create device", exc.errno or errno.EIO, dev.path) from None


def setup_dev_links(rootfs: str) -> None:
    dev = resolve_in_root(rootfs, "/dev")
    for source, link in DEV_SYMLINKS + ((("/proc/kcore", "/dev/core"),) if os.path.exists("/proc/kcore") else ()):
        path = os.path.join(dev, os.path.basename(link))
        if os.path.lexists(path):
            continue
        _do("create /dev symlink", link, os.symlink, source, path)
    ptmx = os.path.join(dev, "ptmx")
    if os.path.isdir(os.path.join(dev, "pts")):
        try:
            if os.path.lexists(ptmx):
                os.unlink(ptmx)
            os.symlink("pts/ptmx", ptmx)
        except OSError as exc:
            raise SetupError("link /dev/ptmx", exc.errno or errno.EIO, ptmx) from None


def needs_dev_setup(spec: Spec) -> bool:
    """Devices are created unless /dev is bind-mounted from the host."""
    return not any(m.destination == "/dev" and "bind" in " ".join(m.options) + m.type for m in spec.mounts)


def pivot_root(rootfs: str) -> None:
    """runc's pivot_root(".", "."): no put_old directory needed; the old root is detached afterwards."""
    try:
        old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        new = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new)
            k.pivot_root(".", ".")
            os.fchdir(old)
            k.mount(None, ".", None, k.MS_SLAVE | k.MS_REC)
            k.umount(".", k.MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(old)
            os.close(new)
    except OSError as exc:
        raise SetupError("pivot_root", exc.errno or errno.EIO, rootfs) from None


def move_root(rootfs: str) -> None:
    """``--no-pivot``: MS_MOVE the rootfs over / and chroot (for ramdisk roots where pivot_root fails)."""
    try:
        os.chdir(rootfs)
        k.mount(rootfs, "/", None, k.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    except OSError as exc:
        raise SetupError("move root", exc.errno or errno.EIO, rootfs) from None


def mask_path(path: str) -> None:
    try:
        if os.path.isdir(path):
            k.mount("tmpfs", path, "tmpfs", k.MS_RDONLY, "size=0")
        else:
            k.mount("/dev/null", path, "bind", k.MS_BIND)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise SetupError("mask path", exc.errno or errno.EIO, path) from None


def readonly_path(path: str) -> None:
    try:
        k.mount(path, path, "bind", k.MS_BIND | k.MS_REC)
        k.mount(None, path, None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | k.MS_REC | _locked_flags(path))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise SetupError("make path read-only", exc.errno or errno.EIO, path) from None


def readonly_root() -> None:
    _do(
        "make root read-only",
        "/",
        k.mount,
        None,
        "/",
        None,
        k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | _locked_flags("/"),
    )
