"""Idmapped mounts (spec 1.1+), prepared by the runtime before it forks: a user namespace carrying each mount's
id mapping (from a short-lived helper process) and a detached, idmapped copy of the mount's source.

Everything here runs in the runtime's own (host) namespaces, as runc 1.2 does it: ``open_tree(OPEN_TREE_CLONE)``
copies the source, ``mount_setattr(MOUNT_ATTR_IDMAP)`` applies the mapping, and the container's setup (in its
new mount namespace, see :func:`pyoci.runtime.rootfs.mount_entry`) only ``move_mount``s the fd onto a destination
it resolved inside the rootfs. A mapping line is ``containerID hostID size`` as in ``uid_map``: a file owned by
``containerID`` on the source is seen as owned by ``hostID`` (a host id) through the mount.
"""

from __future__ import annotations

import errno
import os
import signal

from . import kernel as k
from .errors import SetupError
from .procfs import mounts
from .spec import IDMapping, Mount, Spec

# option: the mapping applies to every mount of the tree (AT_RECURSIVE), not only its top
IDMAP_OPTIONS = {"idmap": False, "ridmap": True}


def is_idmapped(m: Mount) -> bool:
    return bool(m.uid_mappings or any(opt in IDMAP_OPTIONS for opt in m.options))


def supported() -> bool:
    """The kernel has ``mount_setattr`` (Linux 5.12+): asked with arguments it must refuse."""
    try:
        k.mount_setattr(-1, "", 0, 0)
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    return True


def _lines(maps: tuple[IDMapping, ...]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)


def userns_fd(uid_map: str, gid_map: str) -> int:
    """An fd of a new user namespace with these maps: a helper forks, unshares CLONE_NEWUSER and waits; we write
    its maps, open /proc/PID/ns/user, then kill and reap it (by pid). The namespace lives on in the fd."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # only syscalls: this may be a worker thread's fork
        code = 1
        try:
            os.close(ready_r)
            os.close(hold_w)
            k.unshare(k.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(hold_r, 1)  # EOF when the runtime closes its end (or dies): never outlives it
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise SetupError("idmapped mount: user namespace helper", errno.EPIPE, "it exited before its unshare")
        for name, data in (("uid_map", uid_map), ("gid_map", gid_map)):
            try:
                fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                shown = data.strip().replace("\n", ", ")
                raise SetupError(f"idmapped mount: write {name}", exc.errno or errno.EIO, repr(shown)) from None
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue


def _fs_type(path: str) -> str:
    """The filesystem type of the mount ``path`` is on (for error messages)."""
    try:
        dev = os.stat(path).st_dev
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        found = [m.fs_type for m in mounts() if m.device == wanted]
        return found[-1] if found else "unknown"
    except (OSError, ValueError):
        return "unknown"


def detached_trees(spec: Spec) -> dict[int, int]:
    """Index in ``spec.mounts`` -> fd of a detached idmapped copy of that mount's source, for each idmapped
    mount. On failure nothing is left open (the helpers are reaped as they go) and the error names the mount."""
    linux = spec.linux
    users: dict[tuple[str, str], int] = {}
    trees: dict[int, int] = {}
    try:
        for i, m in enumerate(spec.mounts):
            if not is_idmapped(m):
                continue
            where = f"idmapped mount on {m.destination}"
            uid_map, gid_map = _lines(m.uid_mappings), _lines(m.gid_mappings)
            if not uid_map:  # no mapping of its own: the container's user namespace's (checked by the parser)
                uid_map, gid_map = _lines(linux.uid_mappings), _lines(linux.gid_mappings)
            key = (uid_map, gid_map)
            if key not in users:
                ns = linux.namespace("user")
                try:
                    if uid_map:
                        users[key] = userns_fd(uid_map, gid_map)
                    else:  # the container joins a user namespace by path: its mapping
                        assert ns is not None and ns.path
                        users[key] = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
                except SetupError as exc:
                    raise SetupError(
                        f"{where}: {exc.step.removeprefix('idmapped mount: ')}", exc.errno, exc.detail
                    ) from None
                except OSError as exc:
                    raise SetupError(where, exc.errno or errno.EIO, f"user namespace {ns.path if ns else ''}") from None
            recursive_tree = "rbind" in m.options or "ridmap" in m.options
            recursive_map = "ridmap" in m.options
            try:
                tree = k.open_tree(-100, m.source, k.OPEN_TREE_CLONE | (k.AT_RECURSIVE if recursive_tree else 0))
            except OSError as exc:
                raise SetupError(f"{where}: open_tree", exc.errno or errno.EIO, f"source {m.source!r}") from None
            trees[i] = tree
            try:
                # slave of the source, as a bind in the container's rslave mount namespace would be: nothing
                # mounted in the container propagates back to the host
                k.mount_setattr(tree, "", k.AT_EMPTY_PATH | k.AT_RECURSIVE, 0, propagation=k.MS_SLAVE)
                k.mount_setattr(
                    tree,
                    "",
                    k.AT_EMPTY_PATH | (k.AT_RECURSIVE if recursive_map else 0),
                    k.MOUNT_ATTR_IDMAP,
                    userns_fd=users[key],
                )
            except OSError as exc:
                why = f"source {m.source!r} on {_fs_type(m.source)}"
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                    why += ": the kernel or this filesystem cannot idmap it"
                raise SetupError(f"{where}: mount_setattr", exc.errno or errno.EIO, why) from None
    except BaseException:
        for fd in trees.values():
            os.close(fd)
        raise
    finally:
        for fd in users.values():
            os.close(fd)
    return trees
