"""``containerd.task.v2.Task``: thin handlers over the runtime core.

Each handler finds the process, asks the runtime (in this process) to act, publishes the event and
answers; runtime errors become status codes in :mod:`shim.errors`. Event order per container is
create → start → [exec-added → exec-started → exit(exec)]* → exit(init) → delete: events are queued
synchronously right after the action they report, and the init's exit waits for its execs' exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time

from google.protobuf import empty_pb2

from pyoci.protos import containerd_events_pb2 as events
from pyoci.protos import containerd_task_types_pb2 as types_pb2
from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.protos import runc_options_pb2, typeurl
from pyoci.runtime.container import Container, CreateOptions
from pyoci.runtime.errors import ConfigError, PyociError
from pyoci.runtime.spec import parse_process, parse_resources
from pyoci.runtime.state import Store
from pyoci.ttrpc import Code, TtrpcError

from . import mounts
from .errors import not_found, precondition, status
from .events import Publisher, timestamp
from .oom import OOMWatcher
from .reaper import Exit, Reaper
from .stdio import ProcessIO
from .task import CREATED, DELETED, PAUSED, RUNNING, STATUS_PB, STOPPED, ExecProcess, InitProcess, ShimProcess

log = logging.getLogger("pyoci.shim")
TASK_SERVICE = task_pb2.DESCRIPTOR.services_by_name["Task"]
EMPTY = empty_pb2.Empty()


class TaskService:
    def __init__(self, store: Store, reaper: Reaper, publisher: Publisher, on_shutdown) -> None:
        self.namespace = publisher.namespace
        self.store = store
        self.reaper = reaper
        self.publisher = publisher
        self.tasks: dict[str, InitProcess] = {}
        self._on_shutdown = on_shutdown
        self._background: set[asyncio.Task[None]] = set()
        self._creating: set[str] = set()  # ids between the start and the end of their Create (it awaits)
        self.oom = OOMWatcher(lambda cid: publisher.publish("/tasks/oom", events.TaskOOM(container_id=cid)))

    # ----------------------------------------------------------------------------------------- helpers

    def _task(self, container_id: str) -> InitProcess:
        try:
            return self.tasks[container_id]
        except KeyError:
            raise not_found(f"container {container_id}: not found") from None

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        self.oom.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --------------------------------------------------------------------------------------- lifecycle

    async def Create(self, req: task_pb2.CreateTaskRequest, ctx) -> task_pb2.CreateTaskResponse:
        cid = req.id
        log.debug("create %s: bundle %s, %d rootfs mounts", cid, req.bundle, len(req.rootfs))
        if cid in self.tasks or cid in self._creating:
            raise TtrpcError(Code.ALREADY_EXISTS, f"container {cid}: already exists")
        self._creating.add(cid)
        try:
            return await self._create(req)
        finally:
            self._creating.discard(cid)

    async def _create(self, req: task_pb2.CreateTaskRequest) -> task_pb2.CreateTaskResponse:
        cid = req.id
        if req.checkpoint:
            raise TtrpcError(Code.UNIMPLEMENTED, f"create {cid}: restoring from a checkpoint is not supported")
        _check_options(req.options, cid)
        init = InitProcess(cid, "", req.stdin, req.stdout, req.stderr, req.terminal, bundle=req.bundle)
        rootfs = os.path.join(req.bundle, "rootfs")
        with status(f"create {cid}"):
            try:
                mounts.mount_rootfs(req.rootfs, rootfs)
                init.rootfs_mounted = bool(req.rootfs)
                try:
                    init.io = await ProcessIO.open(
                        req.stdin, req.stdout, req.stderr, cid, self.namespace, terminal=req.terminal
                    )
                except (OSError, ValueError) as exc:
                    raise ConfigError("stdio", str(exc), source="CreateTaskRequest") from None
                container = Container.create(self.store, cid, req.bundle, CreateOptions(stdio=init.io.child_fds))
                if req.terminal and container.console is None:
                    container.delete(force=True)
                    raise ConfigError("terminal", "the task asks for a terminal but process.terminal is false")
            except BaseException:
                init.close_io()
                if init.rootfs_mounted:
                    mounts.unmount_rootfs(rootfs)
                raise
        init.io.started()
        if container.console is not None:
            init.io.attach_console(container.console)
        init.container = container
        init.pid = container.state.pid
        self.tasks[cid] = init
        self.reaper.watch(init.pid, lambda ended: self._exited(init, init, ended))
        self.publisher.publish(
            "/tasks/create",
            events.TaskCreate(
                container_id=cid,
                bundle=req.bundle,
                rootfs=req.rootfs,
                pid=init.pid,
                io=events.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal),
            ),
        )
        log.debug("create %s: pid %d", cid, init.pid)
        return task_pb2.CreateTaskResponse(pid=init.pid)

    async def Start(self, req: task_pb2.StartRequest, ctx) -> task_pb2.StartResponse:
        init = self._task(req.id)
        if not req.exec_id:
            if init.status != CREATED:
                raise precondition(f"container {req.id}: cannot start a {init.status} container")
            with status(f"start {req.id}"):
                init.container.start()
            if init.status == CREATED:
                init.status = RUNNING
            self.oom.add(req.id, init.container.cgroup)
            self.publisher.publish("/tasks/start", events.TaskStart(container_id=req.id, pid=init.pid))
            return task_pb2.StartResponse(pid=init.pid)
        proc = init.process(req.exec_id)
        if proc.status != CREATED:
            raise precondition(f"{proc.name}: cannot start a {proc.status} process")
        init.require_exec_allowed()
        with status(f"start {proc.name}"):
            try:
                proc.io = await ProcessIO.open(
                    proc.stdin, proc.stdout, proc.stderr, req.id, self.namespace, terminal=proc.terminal
                )
            except (OSError, ValueError) as exc:
                raise ConfigError("stdio", str(exc), source="ExecProcessRequest") from None
            try:
                proc.pid, console = init.container.exec(proc.spec, stdio=proc.io.child_fds)
            except BaseException:
                proc.close_io()
                raise
        proc.io.started()
        if console is not None:
            proc.io.attach_console(console)
        proc.status = RUNNING
        self.reaper.watch(proc.pid, lambda ended: self._exited(init, proc, ended))
        self.publisher.publish(
            "/tasks/exec-started", events.TaskExecStarted(container_id=req.id, exec_id=req.exec_id, pid=proc.pid)
        )
        return task_pb2.StartResponse(pid=proc.pid)

    async def Exec(self, req: task_pb2.ExecProcessRequest, ctx) -> empty_pb2.Empty:
        init = self._task(req.id)
        if req.exec_id in init.execs:
            raise TtrpcError(Code.ALREADY_EXISTS, f"exec {req.exec_id} of container {req.id}: already exists")
        init.require_exec_allowed()
        with status(f"exec {req.exec_id} of container {req.id}"):
            try:
                data = json.loads(req.spec.value)
            except ValueError as exc:
                raise ConfigError("", f"not JSON: {exc}", source=f"exec {req.exec_id} spec") from None
            spec = parse_process(data, source=f"exec {req.exec_id} spec")
        if spec.terminal != req.terminal:
            spec = dataclasses.replace(spec, terminal=req.terminal)
        init.execs[req.exec_id] = ExecProcess(
            req.id, req.exec_id, req.stdin, req.stdout, req.stderr, req.terminal, spec=spec
        )
        self.publisher.publish("/tasks/exec-added", events.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return EMPTY

    def _exited(self, init: InitProcess, proc: ShimProcess, ended: Exit) -> None:
        """Called by the reaper (synchronously): record the exit, publish it once output is delivered."""
        deleted = proc.status == DELETED
        proc.record_exit(ended)
        if deleted:
            proc.exited.set()
            return
        self._spawn(self._publish_exit(init, proc))

    async def _publish_exit(self, init: InitProcess, proc: ShimProcess) -> None:
        if proc is init:
            # without a pid namespace of its own (none, or a pod's joined by path) the kernel does not end the
            # container's other processes with its init: we do, as runc's shim does, before the exit goes out
            with contextlib.suppress(PyociError):
                init.container.kill_rest()
            pending = [e.exited.wait() for e in init.execs.values() if e.pid and not e.exited.is_set()]
            if pending:
                await asyncio.gather(*pending)  # execs' exits go out before the init's (containerd#9719)
        await proc.drain_io()
        if proc is init:
            self.oom.check(init.container_id)  # an OOM kill is published before the exit it caused
        self.publisher.publish(
            "/tasks/exit",
            events.TaskExit(
                container_id=proc.container_id,
                id=proc.exec_id or proc.container_id,
                pid=proc.pid,
                exit_status=proc.exit_status,
                exited_at=timestamp(proc.exited_at),
            ),
        )
        proc.exited.set()

    async def Wait(self, req: task_pb2.WaitRequest, ctx) -> task_pb2.WaitResponse:
        proc = self._task(req.id).process(req.exec_id)
        await proc.exited.wait()
        return task_pb2.WaitResponse(exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at))

    async def State(self, req: task_pb2.StateRequest, ctx) -> task_pb2.StateResponse:
        proc = self._task(req.id).process(req.exec_id)
        response = task_pb2.StateResponse(
            id=req.id,
            bundle=self.tasks[req.id].bundle,
            pid=proc.pid,
            status=STATUS_PB[proc.status],
            stdin=proc.stdin,
            stdout=proc.stdout,
            stderr=proc.stderr,
            terminal=proc.terminal,
            exit_status=proc.exit_status,
            exec_id=req.exec_id,
        )
        if proc.status in (STOPPED, DELETED):
            response.exited_at.CopyFrom(timestamp(proc.exited_at))
        return response

    async def Kill(self, req: task_pb2.KillRequest, ctx) -> empty_pb2.Empty:
        init = self._task(req.id)
        proc = init.process(req.exec_id)
        if req.all and not req.exec_id:
            with status(f"kill {req.id}"):
                init.container.kill(req.signal, all_processes=True)  # only a cgroup pyoci made
            return EMPTY
        proc.signal(req.signal)
        if req.signal == signal.SIGKILL and init.status == PAUSED:
            with status(f"kill {req.id}"):
                init.container.cgroup.thaw()  # a frozen process only dies once thawed, as with runc
        return EMPTY

    async def Delete(self, req: task_pb2.DeleteRequest, ctx) -> task_pb2.DeleteResponse:
        init = self._task(req.id)
        if req.exec_id:
            proc = init.process(req.exec_id)
            if proc.status in (RUNNING, PAUSED):
                raise precondition(f"{proc.name}: cannot delete a running process")
            proc.close_io()
            proc.status = DELETED
            del init.execs[req.exec_id]
            return _delete_response(proc)
        if init.status in (RUNNING, PAUSED):
            raise precondition(f"container {req.id}: cannot delete a {init.status} container, kill it first")
        if init.status == CREATED:
            init.status = DELETED  # its exit (we kill it now) is not a task exit: no /tasks/exit for it
            init.exit_status, init.exited_at = 128 + signal.SIGKILL, time.time()
        self.oom.remove(req.id)
        with status(f"delete {req.id}"):
            init.container.delete(force=True)
        init.close_io()
        for proc in init.execs.values():
            proc.close_io()
        if init.rootfs_mounted:
            with status(f"delete {req.id}"):
                mounts.unmount_rootfs(os.path.join(init.bundle, "rootfs"))
        init.status = DELETED
        del self.tasks[req.id]
        self.reaper.forget(init.pid)
        self.publisher.publish(
            "/tasks/delete",
            events.TaskDelete(
                container_id=req.id, pid=init.pid, exit_status=init.exit_status, exited_at=timestamp(init.exited_at)
            ),
        )
        return _delete_response(init)

    async def Pids(self, req: task_pb2.PidsRequest, ctx) -> task_pb2.PidsResponse:
        init = self._task(req.id)
        with status(f"pids {req.id}"):
            pids = init.container.pids()
        by_pid = {e.pid: e.exec_id for e in init.execs.values() if e.pid}
        processes = []
        for pid in pids:
            info = types_pb2.ProcessInfo(pid=pid)
            if pid in by_pid:
                info.info.CopyFrom(typeurl.pack(runc_options_pb2.ProcessDetails(exec_id=by_pid[pid])))
            processes.append(info)
        return task_pb2.PidsResponse(processes=processes)

    async def Pause(self, req: task_pb2.PauseRequest, ctx) -> empty_pb2.Empty:
        init = self._task(req.id)
        if init.status != RUNNING:
            raise precondition(f"container {req.id}: cannot pause a {init.status} container")
        with status(f"pause {req.id}"):
            init.container.pause()
        init.status = PAUSED
        self.publisher.publish("/tasks/paused", events.TaskPaused(container_id=req.id))
        return EMPTY

    async def Resume(self, req: task_pb2.ResumeRequest, ctx) -> empty_pb2.Empty:
        init = self._task(req.id)
        if init.status != PAUSED:
            raise precondition(f"container {req.id}: cannot resume a {init.status} container")
        with status(f"resume {req.id}"):
            init.container.resume()
        init.status = RUNNING
        self.publisher.publish("/tasks/resumed", events.TaskResumed(container_id=req.id))
        return EMPTY

    async def Checkpoint(self, req: task_pb2.CheckpointTaskRequest, ctx) -> empty_pb2.Empty:
        raise TtrpcError(Code.UNIMPLEMENTED, f"checkpoint {req.id}: pyoci does not support checkpoints (no CRIU)")

    async def ResizePty(self, req: task_pb2.ResizePtyRequest, ctx) -> empty_pb2.Empty:
        proc = self._task(req.id).process(req.exec_id)
        if proc.io is None or proc.io.console is None:
            return EMPTY  # no console: nothing to resize (containerd's runc shim does the same)
        with status(f"resize {proc.name}"):
            proc.io.resize(req.width, req.height)
        return EMPTY

    async def CloseIO(self, req: task_pb2.CloseIORequest, ctx) -> empty_pb2.Empty:
        proc = self._task(req.id).process(req.exec_id)
        if req.stdin and proc.io is not None:
            proc.io.close_stdin()
        return EMPTY

    async def Update(self, req: task_pb2.UpdateTaskRequest, ctx) -> empty_pb2.Empty:
        init = self._task(req.id)
        with status(f"update {req.id}"):
            try:
                data = json.loads(req.resources.value or b"{}")
            except ValueError as exc:
                raise ConfigError("", f"not JSON: {exc}", source="UpdateTaskRequest.resources") from None
            for warning in init.container.update(parse_resources(data, source="UpdateTaskRequest.resources")):
                log.warning("update %s: %s", req.id, warning)
        return EMPTY

    async def Stats(self, req: task_pb2.StatsRequest, ctx) -> task_pb2.StatsResponse:
        from .metrics import collect

        init = self._task(req.id)
        with status(f"stats {req.id}"):
            return task_pb2.StatsResponse(stats=typeurl.pack(collect(init.container.cgroup)))

    async def Connect(self, req: task_pb2.ConnectRequest, ctx) -> task_pb2.ConnectResponse:
        task_pid = self.tasks[req.id].pid if req.id in self.tasks else 0
        return task_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=task_pid)

    async def Shutdown(self, req: task_pb2.ShutdownRequest, ctx) -> empty_pb2.Empty:
        if not self.tasks:
            asyncio.get_running_loop().call_later(0.05, self._on_shutdown)  # after this answer is sent
        return EMPTY


def _delete_response(proc: ShimProcess) -> task_pb2.DeleteResponse:
    return task_pb2.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at))


def _check_options(options, cid: str) -> None:
    if not options.type_url:
        return
    if options.type_url.rsplit("/", 1)[-1] == runc_options_pb2.Options.DESCRIPTOR.full_name:
        opts = typeurl.unpack(options, runc_options_pb2.Options)
        if opts.systemd_cgroup:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"create {cid}: SystemdCgroup is not supported by pyoci")
