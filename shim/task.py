"""The shim's processes: one state machine for a container's init and its execs, and the operations on them.

``Lifecycle`` is the only place that says which operation a state allows and where it leads
(created → running ⇄ paused → stopped → deleted, as containerd's runc shim): an illegal one raises the
runtime's :class:`InvalidState`, with the message users know ("cannot exec in a paused state"), and
:mod:`shim.errors` makes it a FailedPrecondition. :class:`InitProcess` and :class:`ExecProcess` carry out
Create/Start/Exec/Kill/Pause/Resume/Delete on a :class:`RuntimeContainer`; they know nothing of ttrpc or
events (the service publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyoci.protos import containerd_task_types_pb2 as types_pb2
from pyoci.runtime.errors import AlreadyExists, ConfigError, InvalidState, NotFound, PyociError
from pyoci.runtime.spec import Process, loads, parse_process, parse_resources

from .errors import status
from .reaper import Exit
from .runtime import Runtime, RuntimeContainer
from .stdio import ProcessIO

IO_DRAIN_TIMEOUT = 2.0  # how long an exit waits for output still held open by background children


class Status(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"

    @property
    def pb(self) -> int:
        return _STATUS_PB[self]

    def __str__(self) -> str:
        return self.value


CREATED, RUNNING, PAUSED, STOPPED, DELETED = Status
_STATUS_PB = {
    CREATED: types_pb2.CREATED,
    RUNNING: types_pb2.RUNNING,
    PAUSED: types_pb2.PAUSED,
    STOPPED: types_pb2.STOPPED,
    DELETED: types_pb2.STOPPED,
}

# state → {operation: the state it leads to}. "exec" is asked of the init (its state does not change);
# "exit" is the process ending, whatever was going on.
_NEXT: dict[Status, dict[str, Status]] = {
    CREATED: {"start": RUNNING, "exit": STOPPED, "delete": DELETED},
    RUNNING: {"pause": PAUSED, "exec": RUNNING, "checkpoint": RUNNING, "exit": STOPPED},
    PAUSED: {"resume": RUNNING, "checkpoint": PAUSED, "exit": STOPPED},
    STOPPED: {"delete": DELETED},
    DELETED: {},
}


@dataclass
class Lifecycle:
    """One process's state; ``require`` before an operation, ``advance`` once it is done."""

    name: str  # "container c1", "exec e1 of container c1"
    noun: str  # "container" or "process"
    status: Status = CREATED

    def require(self, op: str) -> Status:
        """The state ``op`` leads to; InvalidState if the current state does not allow it."""
        following = _NEXT[self.status].get(op)
        if following is None:
            raise InvalidState(f"{self.name}: {self._refusal(op)}")
        return following

    def advance(self, op: str) -> None:
        """``op`` is done: move on. A process that ended meanwhile stays ended (its exit wins the race), a deleted
        one stays deleted."""
        if self.status is DELETED or (self.status is STOPPED and op != "delete"):
            return
        self.status = self.require(op)

    def exit(self) -> bool:
        """The process ended; False if its end was recorded already (or it was deleted first)."""
        if "exit" not in _NEXT[self.status]:
            return False
        self.status = STOPPED
        return True

    def _refusal(self, op: str) -> str:
        if op == "exec":
            return f"cannot exec in a {self.status} state"
        if op == "delete" and self.noun == "container":
            return f"cannot delete a {self.status} container, kill it first"
        return f"cannot {op} a {self.status} {self.noun}"


@dataclass(eq=False)
class ShimProcess:
    container_id: str
    exec_id: str  # "" for init
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    pid: int = 0
    exit_status: int = 0
    exited_at: float = 0.0
    io: ProcessIO | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # set once the exit is recorded and published
    lifecycle: Lifecycle = field(init=False)

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.name, "process" if self.exec_id else "container")

    @property
    def name(self) -> str:
        if self.exec_id:
            return f"exec {self.exec_id} of container {self.container_id}"
        return f"container {self.container_id}"

    @property
    def status(self) -> Status:
        return self.lifecycle.status

    def record_exit(self, ended: Exit) -> None:
        if self.lifecycle.exit():
            self.exit_status = ended.status
            self.exited_at = ended.at

    async def open_io(self, namespace: str, source: str) -> ProcessIO:
        try:
            self.io = await ProcessIO.open(
                self.stdin, self.stdout, self.stderr, self.container_id, namespace, terminal=self.terminal
            )
        except (OSError, ValueError) as exc:
            raise ConfigError("stdio", str(exc), source=source) from None
        return self.io

    def running_io(self, console: int | None) -> None:
        """The process has its stdio: drop our copies of its ends, copy from its pty if it has one."""
        assert self.io is not None
        self.io.started()
        if console is not None:
            self.io.attach_console(console)

    async def drain_io(self) -> None:
        if self.io is not None:
            await self.io.drained(IO_DRAIN_TIMEOUT)

    def close_io(self) -> None:
        if self.io is not None:
            self.io.close()

    def signal(self, container: RuntimeContainer, sig: int) -> None:
        if not self.pid:  # never started (or its start failed): as the runc shim, not "finished", which
            # containerd 1.6 would wait on for an exit that never comes
            raise InvalidState(f"{self.name}: process not created")
        if self.status in (STOPPED, DELETED):
            raise NotFound(f"{self.name}: process already finished")
        try:
            container.signal(self.pid, sig)
        except ProcessLookupError:
            raise NotFound(f"{self.name}: process already finished") from None


@dataclass(eq=False)
class ExecProcess(ShimProcess):
    spec: Process | None = None


@dataclass(eq=False)
class InitProcess(ShimProcess):
    bundle: str = ""
    container: RuntimeContainer | None = None
    execs: dict[str, ExecProcess] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one operation of this container at a time

    @property
    def runtime(self) -> RuntimeContainer:
        assert self.container is not None, "a task is recorded only once created"
        return self.container

    def process(self, exec_id: str) -> ShimProcess:
        if not exec_id:
            return self
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id} of container {self.container_id}: process does not exist") from None

    # ----------------------------------------------------------------------------------------- init

    async def create(self, runtime: Runtime, rootfs: Sequence[Any], namespace: str, checkpoint: str = "") -> None:
        """Open the stdio, have the runtime create the container (its init waits to be started; with a
        ``checkpoint``, start restores it)."""
        with status(f"create {self.container_id}"):
            io = await self.open_io(namespace, "CreateTaskRequest")
            try:
                if checkpoint:
                    container = await runtime.restore(self.container_id, self.bundle, rootfs, io.child_fds, checkpoint)
                else:
                    container = await runtime.create(self.container_id, self.bundle, rootfs, io.child_fds)
                if self.terminal and container.console is None:
                    await container.delete()
                    raise ConfigError("terminal", "the task asks for a terminal but process.terminal is false")
            except BaseException:
                self.close_io()
                raise
        if not checkpoint:  # a restore hands the stdio to criu at start: its child ends stay open until then
            self.running_io(container.console)
        self.container = container
        self.pid = container.pid

    async def start(self) -> None:
        self.lifecycle.require("start")
        with status(f"start {self.container_id}"):
            await self.runtime.start()
        if not self.pid:  # restored: the restored init has its stdio and its pid only now
            self.running_io(self.runtime.console)
        self.pid = self.runtime.pid
        self.lifecycle.advance("start")

    async def checkpoint(self, options: Any) -> None:
        self.lifecycle.require("checkpoint")
        with status(f"checkpoint {self.container_id}"):
            await self.runtime.checkpoint(options)

    async def pause(self) -> None:
        self.lifecycle.require("pause")
        with status(f"pause {self.container_id}"):
            await self.runtime.pause()
        self.lifecycle.advance("pause")

    async def resume(self) -> None:
        self.lifecycle.require("resume")
        with status(f"resume {self.container_id}"):
            await self.runtime.resume()
        self.lifecycle.advance("resume")

    async def kill(self, exec_id: str, sig: int, all_processes: bool) -> None:
        if all_processes and not exec_id:
            with status(f"kill {self.container_id}"):
                await self.runtime.kill_all(sig)  # only a cgroup pyoci made
            return
        self.process(exec_id).signal(self.runtime, sig)
        if sig == signal.SIGKILL and self.status is PAUSED:
            with status(f"kill {self.container_id}"):
                await self.runtime.thaw()  # a frozen process only dies once thawed, as with runc

    async def ended(self) -> None:
        """After the init's exit, before it is published: the operation in progress ends (a Start publishes
        its event first), what is left of the container is killed, and the execs' exits go out first."""
        async with self.lock:
            # without a pid namespace of its own (none, or a pod's joined by path) the kernel does not end the
            # container's other processes with its init: we do, as runc's shim does
            if self.status is not DELETED:
                with contextlib.suppress(PyociError):
                    await self.runtime.kill_rest()
        pending = [e.exited.wait() for e in self.execs.values() if e.pid and not e.exited.is_set()]
        if pending:
            await asyncio.gather(*pending)  # execs' exits go out before the init's (containerd#9719)

    async def delete(self) -> None:
        self.lifecycle.require("delete")
        if self.status is CREATED:
            self.lifecycle.advance("delete")  # its exit (we kill it now) is not a task exit: no /tasks/exit
            self.exit_status, self.exited_at = 128 + signal.SIGKILL, time.time()
        with status(f"delete {self.container_id}"):
            await self.runtime.delete()
        self.close_io()
        for proc in self.execs.values():
            proc.close_io()
        self.lifecycle.advance("delete")

    async def update(self, resources_json: bytes) -> list[str]:
        with status(f"update {self.container_id}"):
            data = loads(resources_json or b"{}", source="UpdateTaskRequest.resources")
            return await self.runtime.update(parse_resources(data, source="UpdateTaskRequest.resources"))

    async def pids(self) -> list[tuple[int, str]]:
        """The container's processes, each with its exec id ("" for those that are not execs)."""
        with status(f"pids {self.container_id}"):
            pids = await self.runtime.pids()
        by_pid = {e.pid: e.exec_id for e in self.execs.values() if e.pid}
        return [(pid, by_pid.get(pid, "")) for pid in pids]

    async def metrics(self):
        with status(f"stats {self.container_id}"):
            return await self.runtime.metrics()

    # ---------------------------------------------------------------------------------------- execs

    def add_exec(
        self, exec_id: str, stdin: str, stdout: str, stderr: str, terminal: bool, spec_json: bytes
    ) -> ExecProcess:
        if exec_id in self.execs:
            raise AlreadyExists(f"exec {exec_id} of container {self.container_id}: already exists")
        self.lifecycle.require("exec")
        with status(f"exec {exec_id} of container {self.container_id}"):
            data = loads(spec_json, source=f"exec {exec_id} spec")
            spec = parse_process(data, source=f"exec {exec_id} spec")
        if spec.terminal != terminal:
            spec = dataclasses.replace(spec, terminal=terminal)
        proc = ExecProcess(self.container_id, exec_id, stdin, stdout, stderr, terminal, spec=spec)
        self.execs[exec_id] = proc
        return proc

    async def start_exec(self, proc: ExecProcess, namespace: str) -> None:
        proc.lifecycle.require("start")
        self.lifecycle.require("exec")
        assert proc.spec is not None
        with status(f"start {proc.name}"):
            io = await proc.open_io(namespace, "ExecProcessRequest")
            try:
                proc.pid, console = await self.runtime.exec(proc.spec, io.child_fds)
            except BaseException:
                proc.close_io()
                raise
        proc.running_io(console)
        proc.lifecycle.advance("start")

    def delete_exec(self, exec_id: str) -> ShimProcess:
        proc = self.process(exec_id)
        proc.lifecycle.require("delete")
        proc.close_io()
        proc.lifecycle.advance("delete")
        del self.execs[exec_id]
        return proc
