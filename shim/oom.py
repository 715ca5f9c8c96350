"""OOM kills → ``/tasks/oom``: one watcher per shim, in the event loop (no thread per container).

What decides is the cgroup manager's ``oom_kill_count()`` (cgroup v1: ``memory.oom_control``; v2:
``memory.events``): an event is published when it grows, once per kill, with the container's id. The
kernel's notifications only wake us up, on the file the manager's ``oom_source()`` names: on v1 an eventfd
registered through ``cgroup.event_control``, on v2 inotify on ``memory.events``. ``check()`` reads the
counter synchronously, which the service does before it publishes the init's exit, so the OOM event is
never later than the exit it explains.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
from collections.abc import Callable

from pyoci.runtime.cgroups import Manager, OOMSource
from pyoci.runtime.records import mutable_record

log = logging.getLogger("pyoci.shim")

_IN_MODIFY = 0x2
_IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")
_libc = ctypes.CDLL(None, use_errno=True)


@mutable_record
class _Watch:
    container_id: str
    cgroup: Manager
    counter_file: str  # memory.oom_control (v1) or memory.events (v2)
    last: int
    fd: int = -1  # v1: the eventfd
    wd: int = -1  # v2: the inotify watch


class OOMWatcher:
    def __init__(self, publish: Callable[[str], None]) -> None:
        self._publish = publish
        self._watches: dict[str, _Watch] = {}
        self._inotify = -1
        self._by_wd: dict[int, _Watch] = {}

    def add(self, container_id: str, cgroup: Manager) -> None:
        source = cgroup.oom_source()
        if source is None:
            log.warning("oom: %s: no memory cgroup to watch", container_id)
            return
        try:
            watch = (
                self._add_eventfd(container_id, cgroup, source)
                if source.event_control
                else self._add_inotify(container_id, cgroup, source)
            )
        except OSError as exc:
            log.warning("oom: cannot watch %s: %s", container_id, exc)
            return
        self._watches[container_id] = watch

    def _add_eventfd(self, container_id: str, cgroup: Manager, source: OOMSource) -> _Watch:
        """cgroup v1: an eventfd registered for memory.oom_control through cgroup.event_control."""
        control = source.counter_file
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            cfd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with open(source.event_control, "w") as f:
                    f.write(f"{efd} {cfd}")
            finally:
                os.close(cfd)  # the kernel holds its own reference for the registration
        except OSError:
            os.close(efd)
            raise
        watch = _Watch(container_id, cgroup, control, cgroup.oom_kill_count(), fd=efd)
        asyncio.get_running_loop().add_reader(efd, self._on_eventfd, watch)
        return watch

    def _add_inotify(self, container_id: str, cgroup: Manager, source: OOMSource) -> _Watch:
        """cgroup v2: inotify on memory.events."""
        events = source.counter_file
        if self._inotify < 0:
            fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            self._inotify = fd
            asyncio.get_running_loop().add_reader(fd, self._on_inotify)
        wd = _libc.inotify_add_watch(self._inotify, events.encode(), _IN_MODIFY)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {events}")
        watch = _Watch(container_id, cgroup, events, cgroup.oom_kill_count(), wd=wd)
        self._by_wd[wd] = watch
        return watch

    def check(self, container_id: str) -> bool:
        """Publish ``/tasks/oom`` if the counter grew since we last looked; True if it did."""
        watch = self._watches.get(container_id)
        if watch is None:
            return False
        count = watch.cgroup.oom_kill_count()
        if count <= watch.last:
            return False
        watch.last = count
        self._publish(container_id)
        return True

    def _on_eventfd(self, watch: _Watch) -> None:
        try:
            os.eventfd_read(watch.fd)
        except BlockingIOError:
            return
        except OSError:
            self.remove(watch.container_id)
            return
        if not os.path.exists(watch.counter_file):
            self.remove(watch.container_id)  # the kernel also signals when the cgroup is removed
            return
        self.check(watch.container_id)

    def _on_inotify(self) -> None:
        try:
            data = os.read(self._inotify, 4096)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            watch = self._by_wd.get(wd)
            if watch is None:
                continue
            if mask & _IN_IGNORED:  # the file (the cgroup) is gone
                self._by_wd.pop(wd, None)
                watch.wd = -1
                continue
            self.check(watch.container_id)

    def remove(self, container_id: str) -> None:
        watch = self._watches.pop(container_id, None)
        if watch is None:
            return
        if watch.fd >= 0:
            asyncio.get_running_loop().remove_reader(watch.fd)
            os.close(watch.fd)
        if watch.wd >= 0 and self._inotify >= 0:
            self._by_wd.pop(watch.wd, None)
            _libc.inotify_rm_watch(self._inotify, watch.wd)

    def close(self) -> None:
        for container_id in list(self._watches):
            self.remove(container_id)
        if self._inotify >= 0:
            asyncio.get_running_loop().remove_reader(self._inotify)
            os.close(self._inotify)
            self._inotify = -1
