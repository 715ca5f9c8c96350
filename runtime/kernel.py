"""Thin ctypes wrappers for the Linux calls Python's ``os`` lacks (mount, pivot_root, unshare, setns,
prctl, capset, seccomp, ...). Each raises ``OSError`` with the errno; nothing else happens here.

Safe to call in a forked child: no locks, no allocation beyond ctypes argument conversion.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# clone/unshare flags
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "mount": CLONE_NEWNS,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "user": CLONE_NEWUSER,
    "cgroup": CLONE_NEWCGROUP,
    "time": CLONE_NEWTIME,
}
# names of the namespace files under /proc/<pid>/ns
NAMESPACE_FILES = {
    "pid": "pid",
    "network": "net",
    "mount": "mnt",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
    "time": "time",
}

# prctl options
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYSCALLS = {
    # name: (x86_64, generic: aarch64/riscv64/loongarch64)
    "pivot_root": (155, 41),
    "capset": (126, 91),
    "seccomp": (317, 277),
    "setns": (308, 268),
    "unshare": (272, 97),
    "keyctl": (250, 219),
    "close_range": (436, 436),
    "openat2": (437, 437),
}
_ARCH_GENERIC = os.uname().machine != "x86_64"  # platform.machine() is this, for a 2 ms import


def _nr(name: str) -> int:
    return _SYSCALLS[name][1 if _ARCH_GENERIC else 0]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount", target)


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_nr("pivot_root"), _b(new_root), _b(put_old)), "pivot_root", new_root)


def unshare(flags: int) -> None:
    _check(_libc.syscall(_nr("unshare"), ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(_nr("setns"), ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(_libc.prctl(ctypes.c_int(option), *args), "prctl")


KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring(name: str) -> None:
    """A new session keyring, so the container does not share the runtime's keys (runc does the same)."""
    _check(_libc.syscall(_nr("keyctl"), ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), _b(name)), "keyctl")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_nr("capset"), ctypes.byref(header), ctypes.byref(data)), "capset")


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


SECCOMP_SET_MODE_FILTER = 1


def seccomp_set_filter(program: bytes, flags: int) -> int:
    """Install a classic-BPF seccomp filter (``program`` is an array of 8-byte sock_filter); with
    SECCOMP_FILTER_FLAG_NEW_LISTENER the result is the notify fd (close-on-exec), otherwise 0."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return _check(
        _libc.syscall(_nr("seccomp"), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags), ctypes.byref(prog)),
        "seccomp",
    )


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


CLOSE_RANGE_CLOEXEC = 1 << 2


def close_range_cloexec(first: int, last: int = 0xFFFFFFFF) -> None:
    """Mark every fd in [first, last] close-on-exec (close_range(2) with CLOSE_RANGE_CLOEXEC); where the kernel
    lacks it (< 5.11), walk /proc/self/fd instead."""
    if first > last:
        return
    if (
        _libc.syscall(_nr("close_range"), ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(CLOSE_RANGE_CLOEXEC))
        == 0
    ):
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if first <= fd <= last:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
            except OSError:
                pass  # the fd listing /proc/self/fd itself, closed by now


# openat2(2): resolution confined to a directory
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc.syscall(
            _nr("openat2"), ctypes.c_int(dirfd), _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
        ),
        "openat2",
        path,
    )


PROC_SUPER_MAGIC = 0x9FA0


def fs_type(fd: int) -> int:
    """f_type of fstatfs(2) on ``fd`` (PROC_SUPER_MAGIC for procfs)."""
    buf = ctypes.create_string_buffer(128)  # struct statfs is 120 bytes on 64-bit; f_type comes first
    _check(_libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in this process's network namespace (a new one starts with it down; runc does this)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)  # struct ifreq: name, flags, padding to 40 bytes
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


# the new mount API (Linux 5.2+; mount_setattr 5.12+): detached trees, idmapped mounts
_SYSCALLS.update({"open_tree": (428, 428), "move_mount": (429, 429), "mount_setattr": (442, 442)})
OPEN_TREE_CLONE = 1
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """A detached copy (``OPEN_TREE_CLONE``) of the mount at ``path``, as an fd (close-on-exec)."""
    return _check(
        _libc.syscall(_nr("open_tree"), ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags | os.O_CLOEXEC)),
        "open_tree",
        path,
    )


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, userns_fd: int = 0, propagation: int = 0) -> None:
    attr = _MountAttr(attr_set, 0, propagation, userns_fd)
    _check(
        _libc.syscall(
            _nr("mount_setattr"),
            ctypes.c_int(dirfd),
            _b(path),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
        path,
    )


def move_mount(from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int) -> None:
    _check(
        _libc.syscall(
            _nr("move_mount"),
            ctypes.c_int(from_dirfd),
            _b(from_path),
            ctypes.c_int(to_dirfd),
            _b(to_path),
            ctypes.c_uint(flags),
        ),
        "move_mount",
        to_path,
    )


SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8  # seccomp(2) returns a user-notification fd for SCMP_ACT_NOTIFY


def seccomp_notif_sizes() -> tuple[int, int, int]:
    """The kernel's sizes of struct seccomp_notif, seccomp_notif_resp and seccomp_data (ENOSYS/EINVAL
    where the kernel has no user notification)."""
    sizes = (ctypes.c_uint16 * 3)()
    _check(
        _libc.syscall(_nr("seccomp"), ctypes.c_uint(SECCOMP_GET_NOTIF_SIZES), ctypes.c_uint(0), ctypes.byref(sizes)),
        "seccomp",
    )
    return sizes[0], sizes[1], sizes[2]


# clone3(2) with CLONE_INTO_CGROUP: a child created directly in a cgroup2 directory (Linux >= 5.7)
SYS_CLONE3 = 435  # the same number on x86_64 and in the generic table
CLONE_INTO_CGROUP = 0x200000000
CLONE3_MIN_KERNEL = (5, 7)


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


# A PyDLL call keeps the GIL held across the call (a CDLL call releases it), as os.fork keeps it across fork().
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long
for _hook in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child"):
    getattr(ctypes.pythonapi, _hook).restype = None
    getattr(ctypes.pythonapi, _hook).argtypes = []


def clone3_into_cgroup_supported(release: str | None = None) -> bool:
    """Whether this kernel has clone3(CLONE_INTO_CGROUP) (5.7+). A seccomp filter may still refuse the call:
    callers treat ENOSYS/EPERM from :func:`fork_into_cgroup` as "unsupported" and fall back."""
    parts = (release or os.uname().release).split(".")
    try:
        version = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return False
    return version >= CLONE3_MIN_KERNEL


def fork_into_cgroup(cgroup_fd: int) -> int:
    """``os.fork()``, with the child created in the cgroup2 directory ``cgroup_fd`` (an O_PATH fd is enough):
    it never runs outside that cgroup and nothing is written to cgroup.procs. Returns 0 in the child.

    Only for a **single-threaded** process. The raw syscall bypasses libc's fork(), so the interpreter's and
    libc's fork bookkeeping is done here, the way os.fork does it: PyOS_BeforeFork (at-fork "before" hooks,
    import lock taken), the syscall with the GIL held throughout (a PyDLL call does not release it), then
    PyOS_AfterFork_Child (GIL, import lock and thread states reinitialised, at-fork child hooks) or
    PyOS_AfterFork_Parent. Why that is safe without libc's fork(): with one thread, no other thread can hold
    malloc's or stdio's locks, or the GIL's mutex, at the moment of the clone; no other thread can have asked
    for the GIL (a pending drop request would make the child wait forever for a thread that does not exist
    there, in the few bytecodes run before PyOS_AfterFork_Child); libc's cached thread id in the child is the
    parent's, which only pthread_kill of *another* thread and robust/error-checking mutexes consult (getpid,
    gettid and raise use the syscalls). The caller (process.py's A) is a child of os.fork that started no
    thread, with every signal at SIG_DFL (no Python handler can run in between).
    """
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=17, cgroup=cgroup_fd)  # 17: SIGCHLD
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3(CLONE_INTO_CGROUP): {os.strerror(err)}")
    return pid
