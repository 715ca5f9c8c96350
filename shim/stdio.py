"""A process's stdio: containerd's FIFOs (or a file:// URI) on one side, pipes to the container on the other,
copied by the event loop without blocking it.

stdout/stderr: the container writes into pipes; we copy into the FIFOs, opened O_RDWR so that a
client going away never makes the copy fail (as containerd's runc shim keeps a reader open).
stdin: the FIFO is read and copied into the container's stdin pipe, which is closed at EOF or on
CloseIO. ``drained()`` completes when both output pipes reached EOF: all output has been delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import termios
import urllib.parse
from dataclasses import field

from pyoci.runtime.records import mutable_record

log = logging.getLogger("pyoci.shim")
CHUNK = 65536


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def read_some(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await _readable(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""  # a pty master whose slave side is closed: the terminal's EOF
            raise


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _writable(fd)


async def copy(src: int, dst: int | None) -> None:
    """Copy until EOF on ``src``; a failing destination is dropped, never the source (the container
    must not block on a full pipe because nobody reads its output)."""
    while data := await read_some(src):
        if dst is None:
            continue
        try:
            await write_all(dst, data)
        except OSError as exc:
            log.warning("stdio: writing to fd %d: %s; discarding further output", dst, exc)
            dst = None


def _close_all(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    return r, w


LOGGER_READY_TIMEOUT = 10.0
LOGGER_STOP_TIMEOUT = 5.0


@mutable_record
class Logger:
    """A ``binary://`` logging process: it reads the container's stdout/stderr on fds 3 and 4."""

    pid: int

    def stop(self) -> None:
        """SIGTERM now, SIGKILL if it is still there after a while (containerd's runc shim does the same)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
            asyncio.get_running_loop().call_later(LOGGER_STOP_TIMEOUT, self._kill)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


async def start_logger(uri: str, container_id: str, namespace: str) -> tuple[Logger, int, int]:
    """Spawn the logging binary of a ``binary:///path?k=v`` URI; returns it and the write ends for the
    process's stdout and stderr, once the logger has closed its ready pipe (fd 5)."""
    parsed = urllib.parse.urlparse(uri)
    path = urllib.parse.unquote(parsed.path)
    args = [path]
    for key, values in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items():
        args.append(key)
        if values and values[0]:
            args.append(values[0])
    out_r, out_w = _pipe()
    err_r, err_w = _pipe()
    ready_r, ready_w = _pipe()
    env = {**os.environ, "CONTAINER_ID": container_id, "CONTAINER_NAMESPACE": namespace}
    try:
        pid = os.posix_spawn(
            path,
            args,
            env,
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, out_r, 3),
                (os.POSIX_SPAWN_DUP2, err_r, 4),
                (os.POSIX_SPAWN_DUP2, ready_w, 5),
            ],
        )
    except OSError:
        _close_all((out_w, err_w))
        raise
    finally:
        _close_all((out_r, err_r, ready_w))
    logger = Logger(pid)
    try:
        os.set_blocking(ready_r, False)
        async with asyncio.timeout(LOGGER_READY_TIMEOUT):
            while await read_some(ready_r):
                pass
    except TimeoutError:
        logger.stop()
        _close_all((out_w, err_w))
        raise OSError(f"logging binary {path} did not become ready within {LOGGER_READY_TIMEOUT}s") from None
    finally:
        os.close(ready_r)
    return logger, out_w, err_w


def open_output(uri: str) -> int | None:
    """An fd to write a process's output to: a FIFO path, or ``file:///path`` (appended)."""
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    if parsed.scheme not in ("", "fifo"):
        raise ValueError(f"unsupported stdio URI scheme {parsed.scheme!r} in {uri!r}")
    path = parsed.path if parsed.scheme else uri
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


@mutable_record
class ProcessIO:
    """The shim's side of one process's stdio. ``child_fds`` go to the process, then are closed here."""

    stdin_path: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    terminal: bool = False
    child_fds: tuple[int, int, int] | None = (-1, -1, -1)  # None for a terminal: the pty is its stdio
    console: int | None = None
    _stdin_w: int | None = None
    logger: Logger | None = None
    _null: int = -1
    _stdin_fifo: int | None = None
    _stdout_dst: int | None = None
    _fds: list[int] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _outputs: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(
        cls, stdin: str, stdout: str, stderr: str, container_id: str = "", namespace: str = "", terminal: bool = False
    ) -> ProcessIO:
        io = cls(stdin, stdout, stderr, terminal)
        try:
            if terminal:
                io._open_terminal()
            elif stdout.startswith("binary://"):
                io.logger, out_w, err_w = await start_logger(stdout, container_id, namespace)
                io._fds += [out_w, err_w]
                io._open(logged=(out_w, err_w))
            else:
                io._open()
        except BaseException:
            io.close()
            raise
        return io

    def _open_terminal(self) -> None:
        """A terminal process: the FIFOs are opened now, the copying starts once the pty exists."""
        self.child_fds = None
        if self.stdin_path:
            self._stdin_fifo = os.open(self.stdin_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._stdout_dst = open_output(self.stdout_path)

    def attach_console(self, master: int) -> None:
        """Copy stdin FIFO → pty master → stdout FIFO (a terminal has no separate stderr)."""
        self.console = master
        os.set_blocking(master, False)
        if self._stdout_dst is not None:
            task = asyncio.create_task(copy(master, self._stdout_dst), name="console-out")
            task.add_done_callback(lambda _t, fd=self._stdout_dst: _close_all((fd,)))
            self._stdout_dst = None
            self._outputs.append(task)
        if self._stdin_fifo is not None:
            self._stdin_w = os.dup(master)
            task = asyncio.create_task(self._copy_stdin(self._stdin_fifo), name="console-in")
            task.add_done_callback(lambda _t, fd=self._stdin_fifo: (_close_all((fd,)), self.close_stdin()))
            self._stdin_fifo = None
            self._tasks.append(task)

    def resize(self, width: int, height: int) -> None:
        if self.console is not None:
            fcntl.ioctl(self.console, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def _open(self, logged: tuple[int, int] | None = None) -> None:
        null = self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._fds.append(null)
        child = [null, null, null]
        if self.stdin_path:
            r, w = _pipe()
            fifo = os.open(self.stdin_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(w, False)
            self._fds.append(r)
            self._stdin_w = w
            child[0] = r
            task = asyncio.create_task(self._copy_stdin(fifo), name="stdin")
            task.add_done_callback(lambda _t, fd=fifo: (_close_all((fd,)), self.close_stdin()))
            self._tasks.append(task)
        if logged is not None:  # the logging binary reads the pipes itself: nothing for us to copy
            self.child_fds = (child[0], logged[0], logged[1])
            return
        same = self.stdout_path and self.stdout_path == self.stderr_path
        for i, path in ((1, self.stdout_path), (2, self.stderr_path)):
            if i == 2 and same:
                child[2] = child[1]
                continue
            dst = open_output(path)
            if dst is None:
                continue
            r, w = _pipe()
            os.set_blocking(r, False)
            self._fds.append(w)
            child[i] = w
            task = asyncio.create_task(copy(r, dst), name=f"fd{i}")
            # At EOF (or cancellation) close the pipe and the FIFO: containerd's reader then sees EOF, which ctr
            # waits for before it deletes the task. A done-callback runs even if the task never started.
            task.add_done_callback(lambda _t, fds=(r, dst): _close_all(fds))
            self._outputs.append(task)
        self.child_fds = (child[0], child[1], child[2])

    async def _copy_stdin(self, fifo: int) -> None:
        while self._stdin_w is not None and (data := await read_some(fifo)):
            try:
                await write_all(self._stdin_w, data)
            except OSError:
                return  # the process closed its stdin

    def started(self) -> None:
        """The process has its copies of the child ends: drop ours, so EOF follows the process's exit."""
        if self.child_fds is None:
            return
        for fd in set(self.child_fds) - {self._null}:
            self._fds.remove(fd)
            os.close(fd)

    def close_stdin(self) -> None:
        if self._stdin_w is not None:
            with contextlib.suppress(OSError):
                os.close(self._stdin_w)
            self._stdin_w = None

    async def drained(self, timeout: float | None = None) -> bool:
        """Wait until all output reached containerd (EOF on the pipes); False on timeout."""
        if not self._outputs:
            return True
        done, _ = await asyncio.wait(self._outputs, timeout=timeout)
        return len(done) == len(self._outputs)

    def close(self) -> None:
        """Stop copying and close everything (Delete): FIFO readers see EOF, the logging binary is stopped."""
        if self.logger is not None:
            self.logger.stop()
            self.logger = None
        for task in self._tasks + self._outputs:
            task.cancel()
        self.close_stdin()
        _close_all(fd for fd in (self._stdin_fifo, self._stdout_dst, self.console) if fd is not None)
        self._stdin_fifo = self._stdout_dst = self.console = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
