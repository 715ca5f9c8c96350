"""The shim's view of a container: its init process and its exec processes, each an explicit state machine
(created → running ⇄ paused → stopped → deleted) with its exit, its waiters and its stdio.

States say which operations they allow; an illegal one is a FailedPrecondition whose message users
recognise from containerd's runc shim ("cannot exec in a paused state").
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from pyoci.protos import containerd_task_types_pb2 as types_pb2
from pyoci.runtime.container import Container
from pyoci.runtime.spec import Process

from .errors import not_found, precondition
from .reaper import Exit
from .stdio import ProcessIO

CREATED, RUNNING, PAUSED, STOPPED, DELETED = "created", "running", "paused", "stopped", "deleted"
STATUS_PB = {
    CREATED: types_pb2.CREATED,
    RUNNING: types_pb2.RUNNING,
    PAUSED: types_pb2.PAUSED,
    STOPPED: types_pb2.STOPPED,
    DELETED: types_pb2.STOPPED,
}
IO_DRAIN_TIMEOUT = 2.0  # how long an exit waits for output still held open by background children


@dataclass(eq=False)
class ShimProcess:
    container_id: str
    exec_id: str  # "" for init
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    pid: int = 0
    status: str = CREATED
    exit_status: int = 0
    exited_at: float = 0.0
    io: ProcessIO | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # set once the exit is recorded and published

    @property
    def name(self) -> str:
        return (
            f"exec {self.exec_id} of container {self.container_id}"
            if self.exec_id
            else (f"container {self.container_id}")
        )

    def record_exit(self, ended: Exit) -> None:
        if self.status in (STOPPED, DELETED):
            return
        self.status = STOPPED
        self.exit_status = ended.status
        self.exited_at = ended.at

    async def drain_io(self) -> None:
        if self.io is not None:
            await self.io.drained(IO_DRAIN_TIMEOUT)

    def require_signalable(self) -> None:
        if self.status in (STOPPED, DELETED) or not self.pid:
            raise not_found(f"{self.name}: process already finished")

    def signal(self, sig: int) -> None:
        self.require_signalable()
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            raise not_found(f"{self.name}: process already finished") from None

    def close_io(self) -> None:
        if self.io is not None:
            self.io.close()


@dataclass(eq=False)
class ExecProcess(ShimProcess):
    spec: Process | None = None


@dataclass(eq=False)
class InitProcess(ShimProcess):
    bundle: str = ""
    container: Container | None = None
    execs: dict[str, ExecProcess] = field(default_factory=dict)
    rootfs_mounted: bool = False

    def process(self, exec_id: str) -> ShimProcess:
        if not exec_id:
            return self
        try:
            return self.execs[exec_id]
        except KeyError:
            raise not_found(f"exec {exec_id} of container {self.container_id}: process does not exist") from None

    def require_exec_allowed(self) -> None:
        if self.status == PAUSED:
            raise precondition(f"container {self.container_id}: cannot exec in a paused state")
        if self.status != RUNNING:
            raise precondition(f"container {self.container_id}: cannot exec in a {self.status} state")
