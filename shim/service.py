"""``containerd.task.v2.Task``: thin handlers over the shim's process objects.

Each handler looks the process up, calls it (:mod:`shim.task`, which calls the runtime), publishes the event
and answers; errors become status codes at one boundary (:mod:`shim.errors`). The service is given the
runtime (:class:`shim.runtime.Runtime`), the reaper and an event sink, so it can be tested against stubs.

Operations on one container are serialized (its ``lock``); those of different containers overlap, the
runtime's blocking work running off the event loop. An operation that changes a task runs to its end even if
its request is cancelled. Event order per container is create → start → [exec-added → exec-started →
exit(exec)]* → exit(init) → delete: each event is queued right after the action it reports, under the
container's lock; an init's exit waits for the operation in progress and for its execs' exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from typing import Protocol

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pyoci.protos import containerd_events_pb2 as events
from pyoci.protos import containerd_task_types_pb2 as types_pb2
from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.protos import runc_options_pb2, typeurl
from pyoci.runtime.errors import AlreadyExists, NotFound

from .errors import Unimplemented, boundary, status
from .events import timestamp
from .oom import OOMWatcher
from .reaper import Exit, Reaper
from .runtime import Runtime
from .task import DELETED, STOPPED, ExecProcess, InitProcess, ShimProcess

log = logging.getLogger("pyoci.shim")
TASK_SERVICE = task_pb2.DESCRIPTOR.services_by_name["Task"]
EMPTY = empty_pb2.Empty()


class EventSink(Protocol):
    namespace: str

    def publish(self, topic: str, event: Message) -> None: ...  # queues; never blocks


def _runs_to_end(handler):
    """A handler that changes a task runs as a task of its own: a cancelled request (deadline passed,
    connection closed) loses its answer, never half of the change."""

    @functools.wraps(handler)
    async def run(self: TaskService, request, context):
        return await asyncio.shield(self._own(handler(self, request, context)))

    return run


@boundary(TASK_SERVICE)
class TaskService:
    def __init__(
        self,
        runtime: Runtime,
        reaper: Reaper,
        publisher: EventSink,
        on_shutdown,
        oom: OOMWatcher | None = None,
    ) -> None:
        self.runtime = runtime
        self.namespace = publisher.namespace
        self.reaper = reaper
        self.publisher = publisher
        self.tasks: dict[str, InitProcess] = {}
        self._on_shutdown = on_shutdown
        self._background: set[asyncio.Task] = set()
        self._creating: set[str] = set()  # ids between the start and the end of their Create
        self.oom = oom or OOMWatcher(lambda cid: publisher.publish("/tasks/oom", events.TaskOOM(container_id=cid)))

    # ----------------------------------------------------------------------------------------- helpers

    def _task(self, container_id: str) -> InitProcess:
        try:
            return self.tasks[container_id]
        except KeyError:
            raise NotFound(f"container {container_id}: not found") from None

    @contextlib.asynccontextmanager
    async def _locked(self, container_id: str) -> AsyncIterator[InitProcess]:
        init = self._task(container_id)
        async with init.lock:
            if self.tasks.get(container_id) is not init:  # deleted while we waited
                raise NotFound(f"container {container_id}: not found")
            yield init

    def _own(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its awaiter may be gone
        return task

    async def close(self) -> None:
        self.oom.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.runtime.close()

    # --------------------------------------------------------------------------------------- lifecycle

    @_runs_to_end
    async def Create(self, req: task_pb2.CreateTaskRequest, ctx) -> task_pb2.CreateTaskResponse:
        cid = req.id
        log.debug("create %s: bundle %s, %d rootfs mounts", cid, req.bundle, len(req.rootfs))
        if cid in self.tasks or cid in self._creating:
            raise AlreadyExists(f"container {cid}: already exists")
        if req.parent_checkpoint:
            raise Unimplemented(f"create {cid}: restoring onto a parent checkpoint (pre-dump) is not supported")
        _check_options(req.options, cid)
        init = InitProcess(cid, "", req.stdin, req.stdout, req.stderr, req.terminal, bundle=req.bundle)
        self._creating.add(cid)
        try:
            await init.create(self.runtime, req.rootfs, self.namespace, req.checkpoint)
        finally:
            self._creating.discard(cid)
        self.tasks[cid] = init
        if init.pid:  # a restored init (req.checkpoint) has its pid at Start
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

    @_runs_to_end
    async def Start(self, req: task_pb2.StartRequest, ctx) -> task_pb2.StartResponse:
        async with self._locked(req.id) as init:
            if not req.exec_id:
                restoring = not init.pid
                await init.start()
                if restoring:
                    self.reaper.watch(init.pid, lambda ended: self._exited(init, init, ended))
                self.oom.add(req.id, init.runtime.cgroup)
                self.publisher.publish("/tasks/start", events.TaskStart(container_id=req.id, pid=init.pid))
                return task_pb2.StartResponse(pid=init.pid)
            proc = init.process(req.exec_id)
            assert isinstance(proc, ExecProcess)
            await init.start_exec(proc, self.namespace)
            self.publisher.publish(
                "/tasks/exec-started", events.TaskExecStarted(container_id=req.id, exec_id=req.exec_id, pid=proc.pid)
            )
            self.reaper.watch(proc.pid, lambda ended: self._exited(init, proc, ended))
            return task_pb2.StartResponse(pid=proc.pid)

    async def Exec(self, req: task_pb2.ExecProcessRequest, ctx) -> empty_pb2.Empty:
        init = self._task(req.id)
        init.add_exec(req.exec_id, req.stdin, req.stdout, req.stderr, req.terminal, req.spec.value)
        self.publisher.publish("/tasks/exec-added", events.TaskExecAdded(container_id=req.id, exec_id=req.exec_id))
        return EMPTY

    def _exited(self, init: InitProcess, proc: ShimProcess, ended: Exit) -> None:
        """Called by the reaper (synchronously): record the exit, publish it once output is delivered."""
        deleted = proc.status is DELETED
        proc.record_exit(ended)
        if deleted:
            proc.exited.set()
            return
        self._own(self._publish_exit(init, proc))

    async def _publish_exit(self, init: InitProcess, proc: ShimProcess) -> None:
        if proc is init:
            await init.ended()
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
        init = self._task(req.id)
        proc = init.process(req.exec_id)
        response = task_pb2.StateResponse(
            id=req.id,
            bundle=init.bundle,
            pid=proc.pid,
            status=proc.status.pb,
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

    @_runs_to_end
    async def Kill(self, req: task_pb2.KillRequest, ctx) -> empty_pb2.Empty:
        async with self._locked(req.id) as init:
            await init.kill(req.exec_id, req.signal, req.all)
        return EMPTY

    @_runs_to_end
    async def Delete(self, req: task_pb2.DeleteRequest, ctx) -> task_pb2.DeleteResponse:
        async with self._locked(req.id) as init:
            if req.exec_id:
                return _delete_response(init.delete_exec(req.exec_id))
            await init.delete()
            self.oom.remove(req.id)
            del self.tasks[req.id]
            self.reaper.forget(init.pid)
            self.publisher.publish(
                "/tasks/delete",
                events.TaskDelete(
                    container_id=req.id,
                    pid=init.pid,
                    exit_status=init.exit_status,
                    exited_at=timestamp(init.exited_at),
                ),
            )
            return _delete_response(init)

    async def Pids(self, req: task_pb2.PidsRequest, ctx) -> task_pb2.PidsResponse:
        processes = []
        for pid, exec_id in await self._task(req.id).pids():
            info = types_pb2.ProcessInfo(pid=pid)
            if exec_id:
                info.info.CopyFrom(typeurl.pack(runc_options_pb2.ProcessDetails(exec_id=exec_id)))
            processes.append(info)
        return task_pb2.PidsResponse(processes=processes)

    @_runs_to_end
    async def Pause(self, req: task_pb2.PauseRequest, ctx) -> empty_pb2.Empty:
        async with self._locked(req.id) as init:
            await init.pause()
            self.publisher.publish("/tasks/paused", events.TaskPaused(container_id=req.id))
        return EMPTY

    @_runs_to_end
    async def Resume(self, req: task_pb2.ResumeRequest, ctx) -> empty_pb2.Empty:
        async with self._locked(req.id) as init:
            await init.resume()
            self.publisher.publish("/tasks/resumed", events.TaskResumed(container_id=req.id))
        return EMPTY

    @_runs_to_end
    async def Checkpoint(self, req: task_pb2.CheckpointTaskRequest, ctx) -> empty_pb2.Empty:
        from pyoci.runtime.checkpoint import CheckpointOptions

        opts = runc_options_pb2.CheckpointOptions()
        if req.options.type_url:
            opts = typeurl.unpack(req.options, runc_options_pb2.CheckpointOptions)
        options = CheckpointOptions(
            image_path=opts.image_path or req.path,
            work_path=opts.work_path,
            leave_running=not opts.exit,
            tcp_established=opts.open_tcp,
            ext_unix_sk=opts.external_unix_sockets,
            file_locks=opts.file_locks,
            manage_cgroups_mode=opts.cgroups_mode or "soft",
            empty_ns=tuple(opts.empty_namespaces),
        )
        async with self._locked(req.id) as init:
            await init.checkpoint(options)
        return EMPTY

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

    @_runs_to_end
    async def Update(self, req: task_pb2.UpdateTaskRequest, ctx) -> empty_pb2.Empty:
        async with self._locked(req.id) as init:
            for warning in await init.update(req.resources.value):
                log.warning("update %s: %s", req.id, warning)
        return EMPTY

    async def Stats(self, req: task_pb2.StatsRequest, ctx) -> task_pb2.StatsResponse:
        return task_pb2.StatsResponse(stats=typeurl.pack(await self._task(req.id).metrics()))

    async def Connect(self, req: task_pb2.ConnectRequest, ctx) -> task_pb2.ConnectResponse:
        task_pid = self.tasks[req.id].pid if req.id in self.tasks else 0
        return task_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=task_pid)

    async def Shutdown(self, req: task_pb2.ShutdownRequest, ctx) -> empty_pb2.Empty:
        if not self.tasks and not self._creating:
            asyncio.get_running_loop().call_later(0.05, self._on_shutdown)  # after this answer is sent
        return EMPTY


def _delete_response(proc: ShimProcess) -> task_pb2.DeleteResponse:
    return task_pb2.DeleteResponse(pid=proc.pid, exit_status=proc.exit_status, exited_at=timestamp(proc.exited_at))


def _check_options(options, cid: str) -> None:
    if not options.type_url:
        return
    if options.type_url.rsplit("/", 1)[-1] == runc_options_pb2.Options.DESCRIPTOR.full_name:
        # SystemdCgroup = true: containerd passes cgroupsPath as "slice:prefix:name", and that form is what
        # selects pyoci's systemd cgroup driver (runtime/cgroups/systemd.py), here and in every later call
        typeurl.unpack(options, runc_options_pb2.Options)
