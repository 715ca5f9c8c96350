"""``containerd-shim-pyoci-v2 delete``: clean up after a shim that is gone (killed, crashed).

containerd runs it with the bundle as cwd. It kills what is left of the container, removes its cgroup
and state, unmounts the rootfs, and writes a ``DeleteResponse`` (exit 137, now) to stdout.
"""

from __future__ import annotations

import os
import sys


def delete(flags) -> int:
    from pyoci.protos import containerd_task_v2_pb2 as task_pb2
    from pyoci.runtime.container import Container
    from pyoci.runtime.errors import NotFound, PyociError
    from pyoci.runtime.state import Store

    from .daemon import STATE_ROOT
    from .events import timestamp
    from .mounts import unmount_rootfs

    bundle = flags.bundle or os.getcwd()
    pid = 0
    if flags.id and flags.namespace:
        store = Store(os.path.join(STATE_ROOT, flags.namespace))
        try:
            container = Container.load(store, flags.id)
            pid = container.state.pid
            container.delete(force=True)
        except NotFound:
            pass
        except PyociError as exc:
            print(f"delete {flags.id}: {exc}", file=sys.stderr)
    try:
        unmount_rootfs(os.path.join(bundle, "rootfs"))
    except PyociError as exc:
        print(f"delete {flags.id}: {exc}", file=sys.stderr)
    response = task_pb2.DeleteResponse(pid=pid, exit_status=128 + 9, exited_at=timestamp())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0
