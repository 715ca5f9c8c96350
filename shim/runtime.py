"""What the Task service needs of a container runtime, and pyoci's in-process runtime behind it, off the loop.

The service and its process objects (:mod:`shim.task`) see only :class:`Runtime` and :class:`RuntimeContainer`,
whose blocking operations are coroutines; tests give them a stub. :class:`PyociRuntime` implements them with
:class:`pyoci.runtime.container.Container` and runs every blocking call (forks, hooks of up to a minute, cgroup
freezes, fsyncs, mounts) on a worker thread, so that one container's slow create does not stall the requests
of the pod's other containers. It must not know about tasks, events or status codes.

Forking on a worker thread is safe: the child only makes syscalls up to ``execve`` or ``_exit`` and takes no
lock (runtime/process.py). The runtime's own children (the fork protocol's first child, hook processes) are
children of that worker thread, which waits for them by pid; the shim's reaper waits only for children of the
main thread (:mod:`shim.reaper`), which is where container processes land once reparented, so neither takes
the other's exit statuses.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from google.protobuf.message import Message

from pyoci.runtime.container import Container, CreateOptions
from pyoci.runtime.spec import Process, Resources
from pyoci.runtime.state import Store

from . import mounts

if TYPE_CHECKING:
    from pyoci.runtime.checkpoint import CheckpointOptions, RestoreOptions

T = TypeVar("T")
Stdio = tuple[int, int, int] | None
MAX_THREADS = 64  # blocking calls at once: per container they are serialized by the service, so ~ containers


class RuntimeContainer(Protocol):
    """One created container, as the shim's process objects use it."""

    @property
    def pid(self) -> int: ...

    @property
    def console(self) -> int | None: ...  # pty master of a terminal init (the caller takes it)

    @property
    def cgroup(self) -> Any: ...  # for the OOM watcher

    async def start(self) -> None: ...
    async def exec(self, process: Process, stdio: Stdio) -> tuple[int, int | None]: ...
    def signal(self, pid: int, sig: int) -> None: ...  # raises ProcessLookupError when ``pid`` is gone
    async def kill_all(self, sig: int) -> None: ...  # every process (only of a cgroup pyoci made)
    async def kill_rest(self) -> None: ...  # after the init's exit: what is left of it
    async def thaw(self) -> None: ...
    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def update(self, resources: Resources) -> list[str]: ...  # warnings
    async def pids(self) -> list[int]: ...
    async def metrics(self) -> Message: ...
    async def delete(self) -> None: ...  # forced: kills what runs, removes the cgroup, state and rootfs mounts
    async def checkpoint(self, options: CheckpointOptions) -> None: ...  # criu dump; the init dies unless told


class Runtime(Protocol):
    async def create(
        self, container_id: str, bundle: str, rootfs: Sequence[Any], stdio: Stdio
    ) -> RuntimeContainer: ...  # ``rootfs``: containerd's mounts for <bundle>/rootfs (may be empty)
    async def restore(
        self, container_id: str, bundle: str, rootfs: Sequence[Any], stdio: Stdio, checkpoint: str
    ) -> RuntimeContainer: ...  # as create, but its start restores the container from ``checkpoint`` (criu images)

    def close(self) -> None: ...


class PyociRuntime:
    """pyoci's in-process runtime, each blocking call on a worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._threads = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="runtime")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    async def create(self, container_id: str, bundle: str, rootfs: Sequence[Any], stdio: Stdio) -> PyociContainer:
        return await self.call(self._create, container_id, bundle, rootfs, stdio)

    async def restore(
        self, container_id: str, bundle: str, rootfs: Sequence[Any], stdio: Stdio, checkpoint: str
    ) -> PyociContainer:
        """As containerd's runc shim: nothing runs until Start, which has criu restore the container."""
        return await self.call(self._create, container_id, bundle, rootfs, stdio, checkpoint)

    def _create(
        self, container_id: str, bundle: str, rootfs: Sequence[Any], stdio: Stdio, checkpoint: str = ""
    ) -> PyociContainer:
        target = os.path.join(bundle, "rootfs") if rootfs else None
        if target is not None:
            mounts.mount_rootfs(rootfs, target)
        if checkpoint:
            from pyoci.runtime.checkpoint import RestoreOptions

            restore = RestoreOptions(checkpoint, os.path.join(bundle, "criu-work"), create=CreateOptions(stdio=stdio))
            return PyociContainer(self, None, target, (container_id, bundle, restore))
        try:
            container = Container.create(self.store, container_id, bundle, CreateOptions(stdio=stdio))
        except BaseException:
            if target is not None:
                mounts.unmount_rootfs(target)
            raise
        return PyociContainer(self, container, target)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class PyociContainer:
    def __init__(
        self,
        runtime: PyociRuntime,
        container: Container | None,
        mounted_rootfs: str | None,
        restore: tuple[str, str, RestoreOptions] | None = None,
    ) -> None:
        self._runtime = runtime
        self._container: Container = container  # type: ignore[assignment]  # None only until a restore starts
        self._mounted_rootfs = mounted_rootfs
        self._restore = restore  # (id, bundle, options): start restores instead of releasing a created init

    @property
    def pid(self) -> int:
        return self._container.state.pid if self._container is not None else 0

    @property
    def console(self) -> int | None:
        return self._container.console if self._container is not None else None

    @property
    def cgroup(self) -> Any:
        return self._container.cgroup

    async def start(self) -> None:
        if self._restore is not None:
            from pyoci.runtime.checkpoint import restore

            cid, bundle, options = self._restore
            self._container = await self._runtime.call(restore, self._runtime.store, cid, bundle, options)
            self._restore = None
            return
        await self._runtime.call(self._container.start)

    async def checkpoint(self, options: CheckpointOptions) -> None:
        from pyoci.runtime.checkpoint import checkpoint

        await self._runtime.call(checkpoint, self._container, options)

    async def exec(self, process: Process, stdio: Stdio) -> tuple[int, int | None]:
        return await self._runtime.call(self._container.exec, process, stdio)

    def signal(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)

    async def kill_all(self, sig: int) -> None:
        await self._runtime.call(self._container.kill, sig, True)

    async def kill_rest(self) -> None:
        await self._runtime.call(self._container.kill_rest)

    async def thaw(self) -> None:
        await self._runtime.call(lambda: self._container.cgroup.thaw())

    async def pause(self) -> None:
        await self._runtime.call(self._container.pause)

    async def resume(self) -> None:
        await self._runtime.call(self._container.resume)

    async def update(self, resources: Resources) -> list[str]:
        return await self._runtime.call(self._container.update, resources)

    async def pids(self) -> list[int]:
        return await self._runtime.call(self._container.pids)

    async def metrics(self) -> Message:
        from .metrics import collect

        return await self._runtime.call(lambda: collect(self._container.cgroup))

    async def delete(self) -> None:
        await self._runtime.call(self._delete)

    def _delete(self) -> None:
        if self._container is not None:
            self._container.delete(force=True)
        if self._mounted_rootfs is not None:
            mounts.unmount_rootfs(self._mounted_rootfs)
