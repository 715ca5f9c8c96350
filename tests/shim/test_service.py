"""The Task service against a stub runtime: event order, status codes, Delete/Wait/Kill rules — no root, no kernel.

The stub stands in for the kernel side only (processes, their exits, cgroup freezing); the service, its
process objects, the error boundary and the stdio are the real ones (stdio of "" paths is /dev/null).
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from google.protobuf import any_pb2

from pyoci.protos import containerd_task_types_pb2 as types_pb2
from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.protos import runc_options_pb2, typeurl
from pyoci.runtime.errors import InvalidState
from pyoci.shim.reaper import Exit
from pyoci.shim.service import TaskService
from pyoci.ttrpc import Code, TtrpcError

CID = "c1"


class FakeReaper:
    """The reaper's contract (watch / forget), with exits delivered by the stub instead of waitpid."""

    def __init__(self) -> None:
        self.handlers = {}
        self.unclaimed = {}

    def watch(self, pid, handler):
        if pid in self.unclaimed:
            handler(self.unclaimed.pop(pid))
        else:
            self.handlers[pid] = handler

    def forget(self, pid):
        self.handlers.pop(pid, None)

    def exit(self, pid, status):
        ended = Exit(pid, status, 1000.0 + pid)
        handler = self.handlers.pop(pid, None)
        if handler is None:
            self.unclaimed[pid] = ended
        else:
            handler(ended)


class StubContainer:
    """A container whose processes are pids in a set; a signal that ends one is an exit the reaper delivers on
    the next loop turn — unless the container is frozen, then only once it is thawed (as the kernel does)."""

    def __init__(self, runtime: StubRuntime, pid: int) -> None:
        self.runtime = runtime
        self.pid = pid
        self.console = None
        self.cgroup = None
        self.alive = {pid}
        self.frozen = False
        self.dying: list[tuple[int, int]] = []
        self.calls: list[str] = []
        self.start_gate: asyncio.Event | None = None  # set by a test to hold start() until it is set

    def _die(self, pid: int, status: int) -> None:
        if self.frozen:
            self.dying.append((pid, status))
            return
        self.alive.discard(pid)
        asyncio.get_running_loop().call_soon(self.runtime.reaper.exit, pid, status)

    async def start(self):
        self.calls.append("start")
        if self.start_gate is not None:
            await self.start_gate.wait()

    async def exec(self, process, stdio):
        self.calls.append(f"exec {process.args[0]}")
        pid = self.runtime.next_pid()
        self.alive.add(pid)
        return pid, None

    def signal(self, pid, sig):
        if pid not in self.alive:
            raise ProcessLookupError(pid)
        self.calls.append(f"signal {pid} {sig}")
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._die(pid, 128 + sig)

    async def kill_all(self, sig):
        self.calls.append(f"kill_all {sig}")
        for pid in sorted(self.alive):
            self._die(pid, 128 + sig)

    async def kill_rest(self):
        self.calls.append("kill_rest")
        for pid in sorted(self.alive - {self.pid}):
            self._die(pid, 128 + signal.SIGKILL)

    async def thaw(self):
        self.calls.append("thaw")
        self.frozen = False
        dying, self.dying = self.dying, []
        for pid, status in dying:
            self._die(pid, status)

    async def pause(self):
        self.calls.append("pause")
        self.frozen = True

    async def resume(self):
        self.calls.append("resume")
        await self.thaw()

    async def update(self, resources):
        self.calls.append("update")
        return []

    async def pids(self):
        return sorted(self.alive)

    async def metrics(self):
        return runc_options_pb2.ProcessDetails(exec_id="metrics")

    async def delete(self):
        self.calls.append("delete")
        if self.pid in self.alive:
            self.frozen = False
            self._die(self.pid, 128 + signal.SIGKILL)


class StubRuntime:
    def __init__(self, reaper: FakeReaper) -> None:
        self.reaper = reaper
        self.containers: dict[str, StubContainer] = {}
        self.create_gates: dict[str, asyncio.Event] = {}  # hold a create until set
        self._pid = 100
        self.closed = False

    def next_pid(self) -> int:
        self._pid += 1
        return self._pid

    async def create(self, container_id, bundle, rootfs, stdio):
        if container_id in self.create_gates:
            await self.create_gates[container_id].wait()
        container = self.containers[container_id] = StubContainer(self, self.next_pid())
        return container

    def close(self):
        self.closed = True


class Sink:
    namespace = "test"

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def publish(self, topic, event):
        self.events.append((topic, event))

    def topics(self, container_id: str = CID) -> list[str]:
        out = []
        for topic, event in self.events:
            if event.container_id != container_id:
                continue
            if topic == "/tasks/exit":
                topic += f"({event.id})"
            elif topic.startswith("/tasks/exec-"):
                topic += f"({event.exec_id})"
            out.append(topic)
        return out


class NoOOM:
    def add(self, container_id, cgroup):
        pass

    def remove(self, container_id):
        pass

    def check(self, container_id):
        return False

    def close(self):
        pass


@pytest.fixture
async def shim():
    reaper = FakeReaper()
    runtime = StubRuntime(reaper)
    sink = Sink()
    shutdowns = []
    service = TaskService(runtime, reaper, sink, lambda: shutdowns.append(1), oom=NoOOM())
    service.stub, service.sink, service.shutdowns = runtime, sink, shutdowns
    yield service
    await service.close()
    assert runtime.closed


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


def process_spec(*args: str) -> any_pb2.Any:
    return any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
        value=json.dumps({"args": list(args) or ["true"], "cwd": "/"}).encode(),
    )


async def create(svc, cid=CID, **kw):
    return await svc.Create(task_pb2.CreateTaskRequest(id=cid, bundle=f"/bundles/{cid}", **kw), None)


async def start(svc, cid=CID, exec_id=""):
    return await svc.Start(task_pb2.StartRequest(id=cid, exec_id=exec_id), None)


async def add_exec(svc, exec_id, cid=CID, *args):
    req = task_pb2.ExecProcessRequest(id=cid, exec_id=exec_id, spec=process_spec(*args))
    return await svc.Exec(req, None)


async def kill(svc, sig, cid=CID, exec_id="", all=False):
    return await svc.Kill(task_pb2.KillRequest(id=cid, exec_id=exec_id, signal=sig, all=all), None)


async def state(svc, cid=CID, exec_id=""):
    return await svc.State(task_pb2.StateRequest(id=cid, exec_id=exec_id), None)


async def wait(svc, cid=CID, exec_id=""):
    return await svc.Wait(task_pb2.WaitRequest(id=cid, exec_id=exec_id), None)


async def delete(svc, cid=CID, exec_id=""):
    return await svc.Delete(task_pb2.DeleteRequest(id=cid, exec_id=exec_id), None)


async def refused(call, code: Code, *words: str) -> str:
    with pytest.raises(TtrpcError) as err:
        await call
    assert err.value.code == code, err.value
    for word in words:
        assert word in err.value.message, err.value.message
    return err.value.message


# ------------------------------------------------------------------------------------------- event order


async def test_events_in_order_create_start_exec_exits_delete(shim):
    pid = (await create(shim)).pid
    assert (await start(shim)).pid == pid
    await add_exec(shim, "e1")
    exec_pid = (await start(shim, exec_id="e1")).pid
    await kill(shim, signal.SIGTERM, exec_id="e1")
    assert (await wait(shim, exec_id="e1")).exit_status == 128 + signal.SIGTERM
    await kill(shim, signal.SIGKILL)
    assert (await wait(shim)).exit_status == 137
    await delete(shim, exec_id="e1")
    assert (await delete(shim)).exit_status == 137
    assert shim.sink.topics() == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added(e1)",
        "/tasks/exec-started(e1)",
        "/tasks/exit(e1)",
        f"/tasks/exit({CID})",
        "/tasks/delete",
    ]
    exits = [e for t, e in shim.sink.events if t == "/tasks/exit"]
    assert [(e.pid, e.exit_status) for e in exits] == [(exec_pid, 143), (pid, 137)]


async def test_an_inits_exit_waits_for_its_execs_exits(shim):
    await create(shim)
    await start(shim)
    await add_exec(shim, "e1")
    await start(shim, exec_id="e1")
    await kill(shim, signal.SIGKILL)  # the init dies first; the rest of the container is killed after it
    await wait(shim)
    assert shim.sink.topics()[-2:] == ["/tasks/exit(e1)", f"/tasks/exit({CID})"]
    assert "kill_rest" in shim.stub.containers[CID].calls


async def test_start_event_precedes_an_exit_during_start(shim):
    """The runtime's start runs off the loop: an init that dies meanwhile has its exit published after start."""
    pid = (await create(shim)).pid
    gate = shim.stub.containers[CID].start_gate = asyncio.Event()
    starting = asyncio.create_task(start(shim))
    await settle()
    shim.stub.reaper.exit(pid, 3)  # the init ends while Start is still in the runtime
    await settle()
    assert shim.sink.topics() == ["/tasks/create"]
    gate.set()
    await starting
    assert (await wait(shim)).exit_status == 3
    assert shim.sink.topics() == ["/tasks/create", "/tasks/start", f"/tasks/exit({CID})"]
    assert (await state(shim)).status == types_pb2.STOPPED


async def test_a_slow_create_does_not_hold_up_a_neighbour(shim):
    await create(shim, "n1")
    await start(shim, "n1")
    shim.stub.create_gates["slow"] = asyncio.Event()
    creating = asyncio.create_task(create(shim, "slow"))
    await settle()
    assert (await state(shim, "n1")).status == types_pb2.RUNNING
    await kill(shim, signal.SIGKILL, "n1")
    assert (await wait(shim, "n1")).exit_status == 137
    await refused(create(shim, "slow"), Code.ALREADY_EXISTS)  # its id is taken while it is being created
    await shim.Shutdown(task_pb2.ShutdownRequest(), None)
    await delete(shim, "n1")
    await shim.Shutdown(task_pb2.ShutdownRequest(), None)
    await asyncio.sleep(0.1)
    assert shim.shutdowns == []  # a create in flight keeps the shim
    shim.stub.create_gates["slow"].set()
    assert (await creating).pid > 0


# ----------------------------------------------------------------------------------------- status codes


async def test_precondition_and_lookup_codes(shim):
    await refused(start(shim), Code.NOT_FOUND, "container c1: not found")
    await create(shim)
    await refused(create(shim), Code.ALREADY_EXISTS, "already exists")
    await refused(add_exec(shim, "e1"), Code.FAILED_PRECONDITION, "cannot exec in a created state")
    await refused(shim.Pause(task_pb2.PauseRequest(id=CID), None), Code.FAILED_PRECONDITION, "cannot pause a created")
    await start(shim)
    await refused(start(shim), Code.FAILED_PRECONDITION, "cannot start a running container")
    await refused(shim.Resume(task_pb2.ResumeRequest(id=CID), None), Code.FAILED_PRECONDITION, "cannot resume")
    await refused(delete(shim), Code.FAILED_PRECONDITION, "cannot delete a running container, kill it first")
    await refused(state(shim, exec_id="nope"), Code.NOT_FOUND, "exec nope of container c1")
    await add_exec(shim, "e1")
    await refused(add_exec(shim, "e1"), Code.ALREADY_EXISTS, "exec e1 of container c1: already exists")
    await start(shim, exec_id="e1")
    await refused(start(shim, exec_id="e1"), Code.FAILED_PRECONDITION, "cannot start a running process")
    await refused(delete(shim, exec_id="e1"), Code.FAILED_PRECONDITION, "cannot delete a running process")
    await shim.Pause(task_pb2.PauseRequest(id=CID), None)
    await refused(add_exec(shim, "e2"), Code.FAILED_PRECONDITION, "cannot exec in a paused state")
    await shim.Resume(task_pb2.ResumeRequest(id=CID), None)
    await kill(shim, signal.SIGKILL)
    await wait(shim)
    await refused(kill(shim, signal.SIGTERM), Code.NOT_FOUND, "process already finished")
    checkpoint = shim.Checkpoint(task_pb2.CheckpointTaskRequest(id=CID), None)
    await refused(checkpoint, Code.FAILED_PRECONDITION, "cannot checkpoint a stopped container")
    assert shim.sink.topics().count("/tasks/paused") == shim.sink.topics().count("/tasks/resumed") == 1


async def test_runtime_errors_name_the_operation(shim):
    await create(shim)

    async def refuse_start():
        raise InvalidState("container c1 cannot be started: it is stopped, not created")

    shim.stub.containers[CID].start = refuse_start
    message = await refused(start(shim), Code.FAILED_PRECONDITION, "start c1: container c1 cannot be started")
    assert message.startswith("start c1: ")
    assert (await state(shim)).status == types_pb2.CREATED  # a failed start changes nothing


async def test_a_pre_dump_parent_checkpoint_is_refused_at_create(shim):
    await refused(create(shim, checkpoint="/cp", parent_checkpoint="/p"), Code.UNIMPLEMENTED, "pre-dump")
    assert shim.tasks == {} and shim.sink.events == []


async def test_systemd_cgroup_is_accepted_at_create(shim):
    """SystemdCgroup = true is accepted: the slice:prefix:name cgroupsPath selects the runtime's systemd driver."""
    options = typeurl.pack(runc_options_pb2.Options(systemd_cgroup=True))
    await create(shim, options=options)
    assert shim.sink.topics() == ["/tasks/create"]


# ----------------------------------------------------------------------------------- delete, wait, kill


async def test_delete_of_a_created_task_kills_it_without_an_exit_event(shim):
    pid = (await create(shim)).pid
    response = await delete(shim)
    assert (response.pid, response.exit_status) == (pid, 137)
    await settle()
    assert shim.sink.topics() == ["/tasks/create", "/tasks/delete"]
    assert shim.stub.containers[CID].calls == ["delete"]
    await refused(state(shim), Code.NOT_FOUND)
    await refused(delete(shim), Code.NOT_FOUND)


async def test_wait_after_the_exit_answers_at_once(shim):
    pid = (await create(shim)).pid
    await start(shim)
    shim.stub.reaper.exit(pid, 7)
    await settle()
    assert shim.sink.topics()[-1] == f"/tasks/exit({CID})"
    async with asyncio.timeout(1):
        first, second = await wait(shim), await wait(shim)
    assert first.exit_status == second.exit_status == 7
    assert first.exited_at.seconds == 1000 + pid
    current = await state(shim)
    assert (current.status, current.exit_status, current.exited_at.seconds) == (types_pb2.STOPPED, 7, 1000 + pid)


async def test_kill_of_a_paused_task_thaws_it_so_that_it_dies(shim):
    await create(shim)
    await start(shim)
    await shim.Pause(task_pb2.PauseRequest(id=CID), None)
    assert (await state(shim)).status == types_pb2.PAUSED
    await kill(shim, signal.SIGKILL)
    async with asyncio.timeout(1):
        assert (await wait(shim)).exit_status == 137
    assert shim.stub.containers[CID].calls[-3:-1] == [f"signal {shim.tasks[CID].pid} 9", "thaw"]
    assert (await state(shim)).status == types_pb2.STOPPED


async def test_kill_of_a_paused_task_without_sigkill_leaves_it_frozen(shim):
    await create(shim)
    await start(shim)
    await shim.Pause(task_pb2.PauseRequest(id=CID), None)
    await kill(shim, signal.SIGTERM)
    await settle()
    assert "thaw" not in shim.stub.containers[CID].calls
    assert (await state(shim)).status == types_pb2.PAUSED


async def test_kill_all_goes_to_the_runtime(shim):
    await create(shim)
    await start(shim)
    await kill(shim, signal.SIGKILL, all=True)
    assert (await wait(shim)).exit_status == 137
    assert "kill_all 9" in shim.stub.containers[CID].calls


async def test_pids_name_the_exec_processes(shim):
    await create(shim)
    await start(shim)
    await add_exec(shim, "e1")
    exec_pid = (await start(shim, exec_id="e1")).pid
    response = await shim.Pids(task_pb2.PidsRequest(id=CID), None)
    by_pid = {p.pid: p for p in response.processes}
    assert set(by_pid) == {shim.tasks[CID].pid, exec_pid}
    details = typeurl.unpack(by_pid[exec_pid].info, runc_options_pb2.ProcessDetails)
    assert details.exec_id == "e1" and not by_pid[shim.tasks[CID].pid].HasField("info")


async def test_a_cancelled_request_still_completes_its_operation(shim):
    """A create whose request is cancelled (deadline, lost connection) still records its task and event."""
    shim.stub.create_gates[CID] = asyncio.Event()
    creating = asyncio.create_task(create(shim))
    await settle()
    creating.cancel()
    await settle()
    shim.stub.create_gates[CID].set()
    await settle()
    assert creating.cancelled()
    assert CID in shim.tasks and shim.sink.topics() == ["/tasks/create"]
