"""The task's rootfs: containerd hands the shim mounts (usually one overlay) to put on <bundle>/rootfs."""

from __future__ import annotations

import errno

from pyoci.runtime import kernel
from pyoci.runtime.errors import SetupError
from pyoci.runtime.rootfs import parse_options


def mount_rootfs(mounts, target: str) -> None:
    done = 0
    try:
        for m in mounts:
            opts = parse_options(tuple(m.options))
            flags = opts.flags | (kernel.MS_BIND if m.type == "bind" else 0)
            try:
                kernel.mount(m.source, target, m.type, flags, opts.data or None)
            except OSError as exc:
                raise SetupError(f"mount rootfs ({m.type} from {m.source})", exc.errno or errno.EIO, target) from None
            done += 1
    except BaseException:
        if done:
            unmount_rootfs(target)
        raise


def unmount_rootfs(target: str) -> None:
    """Unmount everything stacked on ``target`` (idempotent)."""
    for _ in range(64):
        try:
            kernel.umount(target, 0)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return  # not (or no longer) a mount point
            if exc.errno == errno.EBUSY:
                kernel.umount(target, kernel.MNT_DETACH)
                continue
            raise SetupError("unmount rootfs", exc.errno or errno.EIO, target) from None
