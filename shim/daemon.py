"""The long-running shim: an asyncio loop serving the Task API on the socket ``start`` created.

It is a child subreaper that reaps on SIGCHLD, publishes events to containerd, logs to the bundle's
``log`` FIFO (fd 2, set up by ``start``) in containerd's logfmt, and exits after ``Shutdown`` once it
holds no container (or on SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import time

from .paths import STATE_ROOT, write_atomic


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace('"', '\\"')
        if record.exc_info:
            msg += " " + self.formatException(record.exc_info).replace("\n", " | ").replace('"', '\\"')
        level = record.levelname.lower().replace("warning", "warn")
        return f'time="{when}.{int(record.msecs):03d}Z" level={level} msg="{msg}" runtime=io.containerd.pyoci.v2'


def claim(listener: socket.socket) -> int | None:
    """An exclusive lock on ``<socket>.lock``: exactly one daemon serves a socket, even if a late fork from
    the template and start's own fallback fork both got it. None if another daemon holds it."""
    fd = os.open(listener.getsockname() + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def run(flags, listener: socket.socket) -> int:
    lock = claim(listener)
    if lock is None:
        return 0  # another daemon serves this socket
    if flags.bundle:
        write_atomic(os.path.join(flags.bundle, "shim.pid"), str(os.getpid()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if flags.debug else logging.INFO)
    logging.raiseExceptions = False  # a log FIFO nobody reads must not break the shim
    asyncio.run(_serve(flags, listener))
    return 0


async def _serve(flags, listener: socket.socket) -> None:
    from pyoci.runtime.state import Store
    from pyoci.ttrpc.server import Server

    from .events import Publisher
    from .reaper import Reaper
    from .runtime import PyociRuntime
    from .service import TASK_SERVICE, TaskService

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reaper = Reaper()
    reaper.install(loop)
    publisher = Publisher(flags.ttrpc_address, flags.namespace)
    publisher.start()
    service = TaskService(PyociRuntime(Store(os.path.join(STATE_ROOT, flags.namespace))), reaper, publisher, stop.set)
    server = Server()
    server.register(TASK_SERVICE, service)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    path = listener.getsockname()
    await server.start(sock=listener)
    logging.getLogger("pyoci.shim").info("serving %s on %s", flags.id, path)
    await stop.wait()
    await server.close()
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.unlink(path + ".lock")
    await service.close()
    await publisher.close()
