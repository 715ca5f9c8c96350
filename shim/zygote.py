"""The shim template (a fork server): one pre-imported process per containerd that forks shim daemons.

Importing asyncio, protobuf and the runtime costs ~120 ms — on the critical path of every container if
each shim imports them itself. The template imports everything once; ``start`` hands it the new shim's
listening socket (SCM_RIGHTS) and gets the pid of a child that serves it at once. The children also
share the template's module pages copy-on-write (``gc.freeze`` keeps the collector from dirtying them),
which is most of a Python shim's memory.

The template is a plain blocking loop (no event loop, no threads, nothing locked when it forks). It
reaps its children and exits after ``IDLE_EXIT`` seconds with no child and no request; ``start`` spawns a
new one when it finds none. Its argv is ``containerd-shim-pyoci-v2 -address <containerd> zygote <padding>``;
each shim it forks rewrites that to ``containerd-shim-pyoci-v2 -namespace NS -id ID -address ...``.

A template serves the code it imported, so its socket is named after the installed build as well as
containerd's address (``paths.build_id``): after an upgrade, ``start`` finds no template for the new build,
forks the daemon itself and spawns a new template; that one, once ready, tells the previous one (named in
``paths.zygote_record``) to retire, and the previous one removes its socket and exits (its shims live on).
"""

from __future__ import annotations

import array
import gc
import marshal
import os
import select
import signal
import socket
import sys
import time

from .paths import build_id, listen, write_atomic, zygote_path, zygote_record

IDLE_EXIT = 30.0


_RETIRE = -1  # _spawn's answer to a request to retire


def serve(path: str, record: str | None = None, idle_exit: float = IDLE_EXIT) -> int:
    """Serve at ``path`` until idle; if ``record`` is given, retire the template it names and name ours."""
    bound_sock = listen(path, socket.SOCK_SEQPACKET, 64)
    if bound_sock is None:
        return 0  # another template serves this containerd and build already
    sock = socket.socket(fileno=bound_sock.detach())
    bound = os.stat(path)  # the socket file's own inode (a socket's fstat shows its sockfs inode instead)
    owner = os.getpid()
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        _preload()
        if record is not None:
            _take_over(record, path)
        return _loop(sock, idle_exit)
    finally:
        if os.getpid() != owner:  # a forked child unwinding (it never should): the files are not its own
            os._exit(1)
        signal.signal(signal.SIGTERM, previous)
        _unlink_if(path, lambda: _same_file(os.stat(path), bound))
        if record is not None:
            _unlink_if(record, lambda: _read(record) == path)
        sock.close()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _unlink_if(path: str, condition) -> None:
    """Remove ``path`` if it is still ours (a newer template may have replaced it)."""
    try:
        if condition():
            os.unlink(path)
    except OSError:
        pass


def _take_over(record: str, path: str) -> None:
    """Name ourselves the current template of this containerd and retire the one named before (an older
    build): it stops serving, so no new shim gets old code, and exits."""
    previous = _read(record)
    write_atomic(record, path)
    if not previous or previous == path:
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(5)
    try:
        conn.connect(previous)
        conn.send(marshal.dumps({"retire": path}))
        conn.recv(4096)
    except OSError:
        pass  # gone already
    finally:
        conn.close()


def _preload() -> None:
    """Import everything a shim daemon needs, then freeze the heap so children share it."""
    sys.modules.setdefault("ssl", None)  # asyncio runs without it (the shim has no TLS): 8 ms of a cold start
    from pyoci.runtime import cgroups, container, process  # noqa: F401
    from pyoci.runtime.cgroups import systemd, v1, v2  # noqa: F401 - open_cgroup imports systemd (and dbus)
    from pyoci.ttrpc.server import Server

    from . import daemon, metrics, service, start  # noqa: F401 - start: run_daemon, in every child

    # Warm what every shim builds first (message classes of the Task service, asyncio's loop machinery),
    # so that it is created once here and shared, rather than once per shim.
    Server().register(service.TASK_SERVICE, object())
    import asyncio

    asyncio.new_event_loop().close()
    gc.collect()
    gc.freeze()


def _loop(sock: socket.socket, idle_exit: float = IDLE_EXIT) -> int:
    children: set[int] = set()
    last_activity = time.monotonic()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        _reap(children)
        if not children and time.monotonic() - last_activity > idle_exit:
            return 0
        if not poller.poll(min(1000, int(idle_exit * 1000) + 1)):
            continue
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        last_activity = time.monotonic()
        with conn:
            pid = _spawn(conn, sock)
        if pid == _RETIRE:
            return 0  # a newer build took over; our shims are reparented and live on
        if pid:
            children.add(pid)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


def receive(conn: socket.socket, max_fds: int = 1) -> tuple[bytes, list[int]]:
    """One message and the fds attached to it, received close-on-exec (MSG_CMSG_CLOEXEC): an fd received
    without it would be inherited by whatever the receiver executes — the shim's listening socket in every
    container. Surplus or truncated fds are closed and reported as an error."""
    fd_size = array.array("i").itemsize
    data, ancdata, flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(max_fds * fd_size), socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fd_size])
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) > max_fds:
        for fd in fds:
            os.close(fd)
        raise ValueError("truncated message or too many fds")
    return data, list(fds)


def _spawn(conn: socket.socket, sock: socket.socket) -> int:
    conn.settimeout(5)
    try:
        data, fds = receive(conn)
        request = marshal.loads(data)
        if not isinstance(request, dict):
            raise ValueError("not a dict")
    except (OSError, ValueError, EOFError, TypeError) as exc:
        _reply(conn, error=f"bad request: {exc}")
        return 0
    if "retire" in request and not fds:
        _reply(conn, retired=True)
        return _RETIRE
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        _reply(conn, error="expected the listening socket")
        return 0
    listener = socket.socket(fileno=fds[0])
    pid = os.fork()
    if pid == 0:
        conn.close()
        sock.close()
        _child(request, listener)  # never returns
    listener.close()
    _reply(conn, pid=pid)
    return pid


def _reply(conn: socket.socket, **msg: object) -> None:
    try:
        conn.send(marshal.dumps(msg))
    except OSError:
        pass


def set_process_title(args: list[str]) -> None:
    """Rewrite this process's argv in place (what ``ps`` and /proc/PID/cmdline show), as setproctitle does:
    a shim forked from the template would otherwise show the template's command line. The template was
    started with a padding argument, so there is room for a shim's usual flags."""
    import ctypes

    from pyoci.runtime.procfs import stat_fields

    fields = stat_fields("self")
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49 of proc(5))
    data = b"\0".join(a.encode() for a in args)[: end - start - 1]
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def _child(request: dict, listener: socket.socket) -> None:
    from .flags import Flags
    from .start import run_daemon

    # the heap stays frozen: the collector would otherwise write into pages shared with the template
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update(request.get("env", {}))
    flags = Flags(**request["flags"])
    set_process_title([sys.argv[0], "-namespace", flags.namespace, "-id", flags.id, "-address", flags.address])
    run_daemon(flags, request["bundle"], listener)


def main(flags) -> int:
    # Detached already by the start that spawned us; make sure nothing of containerd's is held.
    try:
        return serve(zygote_path(flags.address, build_id()), zygote_record(flags.address))
    except Exception as exc:  # the template is an optimisation: failing is not fatal to anyone
        print(f"zygote: {exc}", file=sys.stderr)
        return 1
