"""The shim is a child subreaper: every process of every container ends up as our child. One SIGCHLD
handler in the event loop reaps them all and hands each exit to whoever registered its pid; an exit of
a pid nobody registered yet is kept, so that a process that dies before its owner subscribes is not lost.

It waits only for children of the main thread (``__WNOTHREAD``): container processes land there once their
forking parent exits (the kernel reparents orphans to a subreaper's first live thread). Children the runtime
forks on a worker thread (the fork protocol's first child, hook processes) are that thread's, waited for by
it by pid: the reaper must not take their exit statuses."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

from pyoci.runtime import kernel
from pyoci.runtime.records import record


@record
class Exit:
    pid: int
    status: int  # exit code, or 128 + signal number
    at: float  # time.time()


ExitHandler = Callable[[Exit], None]
WNOTHREAD = 0x20000000  # linux/wait.h __WNOTHREAD: only the calling thread's children


def exit_code(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


class Reaper:
    def __init__(self) -> None:
        self._handlers: dict[int, ExitHandler] = {}
        self._unclaimed: dict[int, Exit] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def watch(self, pid: int, handler: ExitHandler) -> None:
        early = self._unclaimed.pop(pid, None)
        if early is not None:
            handler(early)
        else:
            self._handlers[pid] = handler

    def forget(self, pid: int) -> None:
        self._handlers.pop(pid, None)

    def reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG | WNOTHREAD)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ended = Exit(pid, exit_code(wait_status), time.time())
            handler = self._handlers.pop(pid, None)
            if handler is not None:
                handler(ended)
            else:
                self._unclaimed[pid] = ended
                if len(self._unclaimed) > 4096:  # orphans nobody asks about (a container's reparented children)
                    self._unclaimed.pop(next(iter(self._unclaimed)))
