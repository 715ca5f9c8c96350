"""The container's filesystem view, set up inside its new mount namespace (runs in the forked child).

Order, as runc does it: propagation of /, bind the rootfs onto itself, each ``mounts`` entry in order,
devices and /dev symlinks — then (after the createRuntime/createContainer hooks) pivot_root, the root's
propagation, sysctls, then readonly and masked paths and a read-only root. Every failure raises
:class:`SetupError` with the step and the path.

Paths inside the rootfs are never trusted as strings (CVE-2021-30465: a container sharing a volume can
swap a directory for a symlink between a check and a mount). One O_PATH fd of the rootfs is held from
the start; every destination is resolved against it with ``openat2(RESOLVE_IN_ROOT)`` (symlinks resolved
as if the rootfs were /, so nothing can lead out of it), and the mount, mknod or symlink is made on that
fd (``/proc/self/fd/N``) or relative to it (``*at`` calls).
"""

from __future__ import annotations

import errno
import os
import stat

from . import kernel as k
from .errors import SetupError
from .idmap import IDMAP_OPTIONS
from .procfs import mount_points
from .records import record
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
_IGNORED_OPTIONS = {"tmpcopyup", "defaults", *IDMAP_OPTIONS}  # idmap/ridmap: made by runtime/idmap.py
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


@record
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


# Binds onto these /proc files are allowed (lxcfs emulates them); nothing else may be mounted under /proc
# but procfs itself (runc's checkProcMount, CVE-2019-16884/19921).
PROC_BIND_ALLOWED = frozenset(
    {
        "/proc/cpuinfo",
        "/proc/diskstats",
        "/proc/meminfo",
        "/proc/stat",
        "/proc/swaps",
        "/proc/uptime",
        "/proc/loadavg",
        "/proc/slabinfo",
        "/proc/net/dev",
        "/proc/sys/kernel/ns_last_pid",
    }
)


_RACE_RETRIES = 8  # Root.target: attempts to make a destination a racing container keeps removing


@record
class Root:
    """The rootfs being set up: its host path (host-controlled, from the bundle) and an O_PATH fd of it
    opened after it was bound onto itself, against which everything inside is resolved."""

    path: str
    fd: int

    def open(self, path: str, flags: int = os.O_PATH) -> int:
        """An fd of ``path`` inside the rootfs, symlinks resolved within it (never leading out)."""
        rel = os.path.normpath("/" + path).lstrip("/") or "."
        try:
            return k.openat2(self.fd, rel, flags, k.RESOLVE_IN_ROOT | k.RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
        # kernels before 5.6: resolve by hand, open without following, check where the fd really is
        fd = os.open(_resolve_by_hand(self.path, rel), flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not (self.where(fd) + "/").startswith(self.path.rstrip("/") + "/"):
            os.close(fd)
            raise OSError(errno.EXDEV, "path resolves outside the rootfs", path)
        return fd

    def where(self, fd: int) -> str:
        """The host path an fd refers to."""
        return os.readlink(f"/proc/self/fd/{fd}")

    def inside(self, fd: int) -> str:
        """The path inside the container an fd (from :meth:`open`) refers to."""
        where = self.where(fd)
        return "/" + where[len(self.path) :].lstrip("/") if where.startswith(self.path) else where

    def mkdir_all(self, path: str, mode: int = 0o755, hops: int = 0) -> int:
        """Make ``path`` and its parents inside the rootfs (each created relative to its resolved parent; a
        dangling symlink is followed inside the rootfs, as ``mkdir -p`` in a chroot would); returns an
        O_PATH fd of the directory."""
        parts = [p for p in os.path.normpath("/" + path).split("/") if p]
        fd = self.open(".", os.O_PATH | os.O_DIRECTORY)
        for i, part in enumerate(parts):
            try:
                nxt = self._open_or_make(fd, part, "/".join(parts[: i + 1]), mode)
            finally:
                os.close(fd)
            if isinstance(nxt, str):  # a dangling symlink: make its target, inside the rootfs, and go on there
                if hops >= 40:
                    raise OSError(errno.ELOOP, "too many symlinks", path)
                base = "/" if nxt.startswith("/") else "/" + "/".join(parts[:i])
                return self.mkdir_all(os.path.join(base, nxt, *parts[i + 1 :]), mode, hops + 1)
            fd = nxt
        return fd

    def _open_or_make(self, parent: int, name: str, path: str, mode: int) -> int | str:
        """An fd of directory ``path`` (whose last component is ``name`` in ``parent``), made if missing; or
        the target of a dangling symlink found there."""
        try:
            return self.open(path, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            pass
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except FileExistsError:
            link = _readlink_at(name, parent)
            if link is not None:
                return link
        return self.open(path, os.O_PATH | os.O_DIRECTORY)

    def target(self, path: str, as_file: bool) -> int:
        """An O_PATH fd of a mount destination, made (file or directory) if missing. A destination swapped
        away between being made and being opened (a container racing its own rootfs, shared with another)
        is made again, a few times, before the error stands; every attempt resolves inside the rootfs."""
        for _ in range(_RACE_RETRIES):
            try:
                return self.open(path)
            except FileNotFoundError:
                pass
            try:
                self._make(path, as_file)
            except FileNotFoundError:
                continue
        return self.open(path)

    def _make(self, path: str, as_file: bool) -> None:
        parent = self.mkdir_all(os.path.dirname(os.path.normpath("/" + path)))
        name = os.path.basename(os.path.normpath("/" + path))
        try:
            if as_file:
                os.close(
                    os.open(
                        name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent
                    )
                )
            else:
                os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        finally:
            os.close(parent)


def _readlink_at(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _resolve_by_hand(root: str, path: str) -> str:
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
            raise OSError(errno.ELOOP, "too many symlinks", path)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return os.path.join(root, *resolved)


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _do(step: str, path: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        raise SetupError(step, exc.errno or errno.EIO, path) from None


def _locked_flags(path: str) -> int:
    try:
        f = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(flag for st_flag, flag in _STATVFS_LOCKED if f & st_flag and flag != k.MS_RDONLY)


def prepare_root(rootfs: str, propagation: str) -> Root:
    """Make / a slave (or what rootfsPropagation says), bind the rootfs onto itself, and open it."""
    flag = _PROPAGATION.get(propagation, k.MS_SLAVE | k.MS_REC)
    _do("make / " + (propagation or "rslave"), "/", k.mount, None, "/", None, flag)
    # pivot_root needs the new root's parent mount not to be shared: make that one private.
    _do("make rootfs parent private", rootfs, _make_parent_private, rootfs)
    _do("bind rootfs", rootfs, k.mount, rootfs, rootfs, "bind", k.MS_BIND | k.MS_REC)
    try:
        fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError("open rootfs", exc.errno or errno.EIO, rootfs) from None
    return Root(os.path.realpath(rootfs), fd)


def apply_root_propagation(propagation: str) -> None:
    """rootfsPropagation applies to the container's / once it is /, after pivot_root (runc does the same;
    private is the state already)."""
    flag = _PROPAGATION.get(propagation, 0)
    if flag and not flag & k.MS_PRIVATE:
        _do("set rootfs propagation " + propagation, "/", k.mount, None, "/", None, flag)


def _make_parent_private(rootfs: str) -> None:
    mount_point = _mount_point_of(rootfs)
    k.mount(None, mount_point, None, k.MS_PRIVATE)


def _mount_point_of(path: str) -> str:
    best = "/"
    for target in mount_points():
        if (path + "/").startswith(target.rstrip("/") + "/") and len(target) > len(best):
            best = target
    return best


def check_proc_mount(m: Mount, inside: str) -> None:
    """Only procfs on /proc, and nothing under it but binds onto a few files lxcfs emulates."""
    if inside != "/proc" and not inside.startswith("/proc/"):
        return
    if inside == "/proc":
        if m.type == "proc":
            return
        raise SetupError(
            f"mount {m.type or 'bind'} on {m.destination}", errno.EPERM, "only procfs may be mounted on /proc"
        )
    if inside in PROC_BIND_ALLOWED:
        return
    raise SetupError(
        f"mount {m.type or 'bind'} on {m.destination}", errno.EPERM, f"{inside}: mounts under /proc are not allowed"
    )


def mount_entry(
    root: Root,
    m: Mount,
    *,
    cgroup_paths: dict[str, str],
    cgroup_version: str,
    cgroupns: bool,
    netns: bool,
    tree: int = -1,
) -> None:
    """Mount ``m`` on its destination resolved inside the rootfs; ``tree`` is the fd of the detached idmapped
    copy of its source the runtime made (runtime/idmap.py), moved there instead of a bind."""
    opts = parse_options(m.options)
    step = f"mount {m.type or 'bind'} on {m.destination}"
    is_bind = bool(opts.flags & k.MS_BIND) or m.type == "bind"
    fd = -1
    try:
        if is_bind:
            if not os.path.exists(m.source):
                raise OSError(errno.ENOENT, "bind source does not exist", m.source)
            fd = root.target(m.destination, as_file=not os.path.isdir(m.source))
        else:
            fd = root.target(m.destination, as_file=False)
        check_proc_mount(m, root.inside(fd))
        if is_bind:
            _bind(root, m, fd, opts, tree)
        elif m.type == "cgroup":
            _mount_cgroup(root, m, fd, opts, cgroup_paths, cgroup_version, cgroupns)
        else:
            try:
                k.mount(m.source or m.type, _fdpath(fd), m.type, opts.flags, opts.data or None)
            except OSError as exc:
                if m.type == "sysfs" and exc.errno == errno.EPERM and not netns:
                    # sysfs can only be mounted in a new network namespace: bind the host's instead.
                    k.mount("/sys", _fdpath(fd), "bind", k.MS_BIND | k.MS_REC)
                    _remount(root, m.destination, k.MS_BIND | k.MS_REC | (opts.flags & ~k.MS_REC))
                else:
                    raise
        for flag in opts.propagation:
            _on_mounted(root, m.destination, lambda path, flag=flag: k.mount(None, path, None, flag))
    except OSError as exc:
        data = f", filesystem options {opts.data!r}" if opts.data else ""  # unknown options go to the kernel
        raise SetupError(step, exc.errno or errno.EIO, f"source {m.source!r}{data}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _on_mounted(root: Root, destination: str, fn) -> None:
    """Run ``fn(path)`` on what is now mounted at ``destination`` (resolved again: the fd from before the
    mount refers to the directory underneath)."""
    fd = root.open(destination)
    try:
        fn(_fdpath(fd))
    finally:
        os.close(fd)


def _remount(root: Root, destination: str, flags: int) -> None:
    def remount(path: str) -> None:
        try:
            k.mount(None, path, None, k.MS_REMOUNT | flags)
        except PermissionError:
            k.mount(None, path, None, k.MS_REMOUNT | flags | _locked_flags(path))

    _on_mounted(root, destination, remount)


def _bind(root: Root, m: Mount, fd: int, opts: MountOptions, tree: int = -1) -> None:
    flags = opts.flags | k.MS_BIND
    if tree >= 0:  # an idmapped copy, onto the fd of the destination (never a path)
        k.move_mount(tree, "", fd, "", k.MOVE_MOUNT_F_EMPTY_PATH | k.MOVE_MOUNT_T_EMPTY_PATH)
    else:
        k.mount(m.source, _fdpath(fd), "bind", flags & (k.MS_BIND | k.MS_REC))
    extra = flags & ~(k.MS_BIND | k.MS_REC | k.MS_REMOUNT)
    if extra:
        _remount(root, m.destination, k.MS_BIND | extra)


def _mount_cgroup(
    root: Root,
    m: Mount,
    fd: int,
    opts: MountOptions,
    cgroup_paths: dict[str, str],
    cgroup_version: str,
    cgroupns: bool,
) -> None:
    """cgroup v2 in a cgroup namespace: mount cgroup2. Otherwise (v1, hybrid): a tmpfs with the container's
    cgroup directory of each hierarchy bound under it, read-only when the mount is."""
    flags = opts.flags & ~k.MS_BIND
    if cgroup_version == "v2":
        if cgroupns:
            k.mount("cgroup", _fdpath(fd), "cgroup2", flags)
        else:
            k.mount(cgroup_paths[""], _fdpath(fd), "bind", k.MS_BIND | k.MS_REC)
            _remount(root, m.destination, k.MS_BIND | flags)
        return
    k.mount("tmpfs", _fdpath(fd), "tmpfs", flags & ~k.MS_RDONLY, "mode=755")
    by_dir: dict[str, list[str]] = {}
    for subsystem, path in cgroup_paths.items():
        by_dir.setdefault(path, []).append(subsystem.removeprefix("name=") or "unified")
    tmpfs = root.open(m.destination)  # the fresh tmpfs: ours alone, nothing else can reach it
    try:
        for path, names in sorted(by_dir.items()):
            name = ",".join(sorted(names))
            os.mkdir(name, 0o755, dir_fd=tmpfs)
            sub = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmpfs)
            try:
                k.mount(path, _fdpath(sub), "bind", k.MS_BIND | k.MS_REC)
            finally:
                os.close(sub)
            _remount(root, os.path.join(m.destination, name), k.MS_BIND | flags)
    finally:
        os.close(tmpfs)
    if flags & k.MS_RDONLY:
        _on_mounted(root, m.destination, lambda p: k.mount(None, p, None, k.MS_REMOUNT | flags, "mode=755"))


_NODE_KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def create_devices(root: Root, devices: tuple[Device, ...], in_userns: bool) -> None:
    for dev in devices:
        parent = -1
        try:
            parent = root.mkdir_all(os.path.dirname(dev.path))
            name = os.path.basename(dev.path)
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            if in_userns:
                # mknod is not allowed in a user namespace: bind the host's node instead.
                os.close(
                    os.open(
                        name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent
                    )
                )
                node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    k.mount(dev.path, _fdpath(node), "bind", k.MS_BIND)
                finally:
                    os.close(node)
                continue
            kind = _NODE_KINDS[dev.type]
            mode = dev.file_mode if dev.file_mode is not None else 0o666
            os.mknod(name, kind | mode, os.makedev(dev.major, dev.minor), dir_fd=parent)
            node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                if stat.S_IFMT(os.fstat(node).st_mode) != kind:
                    raise OSError(errno.EEXIST, "replaced while being made", dev.path)
                os.chmod(_fdpath(node), mode)  # mknod is subject to the umask
                os.chown(_fdpath(node), dev.uid or 0, dev.gid or 0)
            finally:
                os.close(node)
        except OSError as exc:
            raise SetupError("create device", exc.errno or errno.EIO, dev.path) from None
        finally:
            if parent >= 0:
                os.close(parent)


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def setup_dev_links(root: Root) -> None:
    try:
        dev = root.open("/dev", os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        raise SetupError("open /dev", exc.errno or errno.EIO, "/dev") from None
    try:
        links = DEV_SYMLINKS + ((("/proc/kcore", "/dev/core"),) if os.path.exists("/proc/kcore") else ())
        for source, link in links:
            name = os.path.basename(link)
            if not _lexists(name, dev):
                _do("create /dev symlink", link, os.symlink, source, name, dir_fd=dev)
        if _lexists("pts", dev) and stat.S_ISDIR(os.stat("pts", dir_fd=dev, follow_symlinks=False).st_mode):
            try:
                if _lexists("ptmx", dev):
                    os.unlink("ptmx", dir_fd=dev)
                os.symlink("pts/ptmx", "ptmx", dir_fd=dev)
            except OSError as exc:
                raise SetupError("link /dev/ptmx", exc.errno or errno.EIO, "/dev/ptmx") from None
    finally:
        os.close(dev)


def write_sysctl(key: str, value: str) -> None:
    """Write /proc/sys/<key> of the container (after pivot_root), refusing anything but procfs there."""
    if "/" in key or ".." in key:
        raise OSError(errno.EINVAL, "invalid sysctl name", key)
    fd = os.open("/proc/sys/" + key.replace(".", "/"), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if k.fs_type(fd) != k.PROC_SUPER_MAGIC:
            raise OSError(errno.EXDEV, "not on procfs", "/proc/sys/" + key.replace(".", "/"))
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def needs_dev_setup(spec: Spec) -> bool:
    """Devices are created unless /dev is bind-mounted from the host."""
    return not any(m.destination == "/dev" and "bind" in " ".join(m.options) + m.type for m in spec.mounts)


def pivot_root(root: Root) -> None:
    """runc's pivot_root(".", "."), in the rootfs fd held from the start: no put_old directory needed; the
    old root is detached afterwards."""
    try:
        old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(root.fd)
            k.pivot_root(".", ".")
            os.fchdir(old)
            k.mount(None, ".", None, k.MS_SLAVE | k.MS_REC)
            k.umount(".", k.MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(old)
            os.close(root.fd)
    except OSError as exc:
        raise SetupError("pivot_root", exc.errno or errno.EIO, root.path) from None


def move_root(root: Root) -> None:
    """``--no-pivot``: MS_MOVE the rootfs over / and chroot (for ramdisk roots where pivot_root fails)."""
    try:
        os.fchdir(root.fd)
        k.mount(root.path, "/", None, k.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
        os.close(root.fd)
    except OSError as exc:
        raise SetupError("move root", exc.errno or errno.EIO, root.path) from None


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
