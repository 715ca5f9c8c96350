"""``containerd-shim-pyoci-v2 delete``: clean up after a shim that is gone.

containerd runs it (cwd = bundle) whenever a shim's connection closes — after every normal Shutdown
too, and it waits for it. So the common case, where the shim already removed everything, takes a fast
path that imports nothing heavy: no state, rootfs not mounted → answer at once. Otherwise it kills
what is left of the container, removes its cgroup and state, and unmounts the rootfs. The answer is a
``DeleteResponse`` (exit 137, now) on stdout, encoded by hand here (three varint fields: cheaper than
importing protobuf; a unit test checks the bytes against the generated message).
"""

from __future__ import annotations

import os
import sys
import time

from .paths import STATE_ROOT, group_id, socket_address, unix_socket


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_delete_response(pid: int, exit_status: int, exited_at_ns: int) -> bytes:
    """``containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp{seconds=1, nanos=2}}``."""
    seconds, nanos = divmod(exited_at_ns, 10**9)
    stamp = (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")
    out = b""
    if pid:
        out += b"\x08" + _varint(pid)
    if exit_status:
        out += b"\x10" + _varint(exit_status)
    return out + b"\x1a" + _varint(len(stamp)) + stamp


def _is_mounted(path: str) -> bool:
    from pyoci.runtime.procfs import mount_points

    return path in mount_points()


def delete(flags) -> int:
    bundle = flags.bundle or os.getcwd()
    rootfs = os.path.join(bundle, "rootfs")
    pid = 0
    state_dir = os.path.join(STATE_ROOT, flags.namespace, flags.id) if flags.id and flags.namespace else ""
    if state_dir and os.path.exists(os.path.join(state_dir, "state.json")):
        pid = _delete_container(flags)
    if _is_mounted(rootfs):
        from pyoci.runtime.errors import PyociError

        from .mounts import unmount_rootfs

        try:
            unmount_rootfs(rootfs)
        except PyociError as exc:
            print(f"delete {flags.id}: {exc}", file=sys.stderr)
    if flags.id and flags.namespace:
        _remove_dead_socket(flags, bundle)
    sys.stdout.buffer.write(encode_delete_response(pid, 128 + 9, time.time_ns()))
    return 0


def _remove_dead_socket(flags, bundle: str) -> None:
    """A shim that was killed leaves its socket behind; remove it — unless a live shim (of the same pod)
    still holds the socket's lock (see daemon.claim), or the socket still accepts connections (a new shim
    for the pod has bound it and listens, but its daemon has not claimed the lock yet)."""
    import fcntl

    path = socket_address(flags.address, flags.namespace, group_id(bundle, flags.id)).removeprefix("unix://")
    probe = unix_socket()
    try:
        probe.connect(path)
        return  # someone listens on it: not ours to remove
    except OSError:
        pass
    finally:
        probe.close()
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for leftover in (path, path + ".lock"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
    except BlockingIOError:
        pass  # a live shim serves this socket
    finally:
        if fd >= 0:
            os.close(fd)


def _delete_container(flags) -> int:
    from pyoci.runtime.container import Container
    from pyoci.runtime.errors import NotFound, PyociError
    from pyoci.runtime.state import Store

    try:
        container = Container.load(Store(os.path.join(STATE_ROOT, flags.namespace)), flags.id)
        pid = container.state.pid
        container.delete(force=True)
        return pid
    except NotFound:
        return 0
    except PyociError as exc:
        print(f"delete {flags.id}: {exc}", file=sys.stderr)
        return 0
