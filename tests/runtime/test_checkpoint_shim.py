"""The Task API's Checkpoint and Create-with-checkpoint against the service's stub runtime (no criu, no root):
options mapped as containerd's runc shim maps them, the restore deferred to Start, the restored init's exit
delivered, the state machine's refusals."""

from __future__ import annotations

import os
import signal

import pytest

from pyoci.protos import containerd_task_types_pb2 as types_pb2
from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.protos import runc_options_pb2, typeurl
from pyoci.shim.service import TaskService
from pyoci.ttrpc import Code
from tests.shim.test_service import (
    CID,
    FakeReaper,
    NoOOM,
    Sink,
    StubContainer,
    StubRuntime,
    create,
    kill,
    refused,
    settle,
    start,
    state,
    wait,
)


class CheckpointingContainer(StubContainer):
    def __init__(self, runtime, pid: int, restored_pid: int = 0) -> None:
        super().__init__(runtime, pid)
        self.checkpoints = []
        self.restored_pid = restored_pid
        self.stdio: tuple[int, ...] = ()
        self.stdio_at_start: list[bool] = []

    async def start(self):
        await super().start()
        self.stdio_at_start = [_is_open(fd) for fd in self.stdio]  # what criu restore is handed
        if self.restored_pid:  # what PyociContainer does: the restored init's pid is known only now
            self.pid = self.restored_pid
            self.alive = {self.pid}

    async def checkpoint(self, options):
        self.checkpoints.append(options)
        if not options.leave_running:
            self._die(self.pid, 128 + signal.SIGKILL)  # criu kills the dumped tree


class CheckpointingRuntime(StubRuntime):
    async def create(self, container_id, bundle, rootfs, stdio):
        container = self.containers[container_id] = CheckpointingContainer(self, self.next_pid())
        return container

    async def restore(self, container_id, bundle, rootfs, stdio, checkpoint):
        self.restored_from = checkpoint
        container = self.containers[container_id] = CheckpointingContainer(self, 0, self.next_pid())
        container.stdio = stdio
        return container


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_open(fd: int) -> bool:
    return _identity(fd) is not None


@pytest.fixture
async def shim():
    reaper = FakeReaper()
    runtime = CheckpointingRuntime(reaper)
    sink = Sink()
    service = TaskService(runtime, reaper, sink, lambda: None, oom=NoOOM())
    service.stub, service.sink = runtime, sink
    yield service
    await service.close()


async def checkpoint(svc, path="/run/cp", **options):
    packed = typeurl.pack(runc_options_pb2.CheckpointOptions(**options)) if options else None
    return await svc.Checkpoint(task_pb2.CheckpointTaskRequest(id=CID, path=path, options=packed), None)


async def test_checkpoint_maps_containerds_options(shim):
    await create(shim)
    await refused(checkpoint(shim), Code.FAILED_PRECONDITION, "cannot checkpoint a created container")
    await start(shim)
    await checkpoint(shim)  # no options (ctr containers checkpoint): the task keeps running
    await checkpoint(shim, exit=True, open_tcp=True, file_locks=True, work_path="/w", empty_namespaces=["network"])
    first, second = shim.stub.containers[CID].checkpoints
    assert first.image_path == "/run/cp" and first.leave_running and first.manage_cgroups_mode == "soft"
    assert not second.leave_running and second.tcp_established and second.file_locks
    assert second.work_path == "/w" and second.empty_ns == ("network",)
    await settle()
    assert (await wait(shim)).exit_status == 128 + signal.SIGKILL  # criu's kill is the task's exit
    await refused(checkpoint(shim), Code.FAILED_PRECONDITION, "cannot checkpoint a stopped container")


async def test_checkpoint_of_a_paused_task(shim):
    await create(shim)
    await start(shim)
    await shim.Pause(task_pb2.PauseRequest(id=CID), None)
    await checkpoint(shim, image_path="/images")
    assert shim.stub.containers[CID].checkpoints[0].image_path == "/images"
    assert (await state(shim)).status == types_pb2.PAUSED


async def test_create_with_checkpoint_restores_at_start(shim):
    created = await create(shim, checkpoint="/var/lib/cp")
    assert created.pid == 0 and shim.stub.restored_from == "/var/lib/cp"
    started = await start(shim)
    assert started.pid > 0 and (await state(shim)).status == types_pb2.RUNNING
    await kill(shim, signal.SIGKILL)
    await settle()
    ended = await wait(shim)
    assert ended.exit_status == 128 + signal.SIGKILL  # the restored init's exit reaches the task
    assert "/tasks/exit(c1)" in shim.sink.topics()


async def test_restore_keeps_the_stdio_for_start(shim, tmp_path):
    """criu restore runs at Start with the task's stdio: the child ends stay open until then (ctr's restore
    failed with EBADF when Create had closed them), and are dropped once the restored init has them."""
    out = tmp_path / "out"
    await create(shim, checkpoint="/var/lib/cp", stdout=f"file://{out}", stderr=f"file://{out}")
    container = shim.stub.containers[CID]
    assert container.stdio and all(_is_open(fd) for fd in container.stdio)
    pipes = [_identity(fd) for fd in container.stdio[1:]]
    await start(shim)
    assert container.stdio_at_start == [True, True, True]
    # ours dropped (closed, or the number reused for another file): EOF follows the init's exit
    assert all(_identity(fd) != pipe for fd, pipe in zip(container.stdio[1:], pipes, strict=True))


async def test_parent_checkpoint_is_refused(shim):
    await refused(create(shim, checkpoint="/cp", parent_checkpoint="/p"), Code.UNIMPLEMENTED, "pre-dump")
    assert shim.tasks == {}
