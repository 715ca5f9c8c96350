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
"""

from __future__ import annotations

import errno
import gc
import marshal
import os
import select
import signal
import socket
import sys
import time

IDLE_EXIT = 30.0


def serve(path: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.bind(path)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(path)
            return 0  # another template serves this containerd already
        except OSError:
            os.unlink(path)
            sock.bind(path)
        finally:
            probe.close()
    os.chmod(path, 0o600)
    sock.listen(64)
    try:
        _preload()
        return _loop(sock)
    finally:
        try:
            if os.stat(path).st_ino == os.fstat(sock.fileno()).st_ino:
                os.unlink(path)
        except OSError:
            pass
        sock.close()


def _preload() -> None:
    """Import everything a shim daemon needs, then freeze the heap so children share it."""
    from pyoci.runtime import cgroups, container, process  # noqa: F401
    from pyoci.runtime.cgroups import v1, v2  # noqa: F401
    from pyoci.ttrpc.server import Server

    from . import daemon, metrics, service  # noqa: F401

    # Warm what every shim builds first (message classes of the Task service, asyncio's loop machinery),
    # so that it is created once here and shared, rather than once per shim.
    Server().register(service.TASK_SERVICE, object())
    import asyncio

    asyncio.new_event_loop().close()
    gc.collect()
    gc.freeze()


def _loop(sock: socket.socket) -> int:
    children: set[int] = set()
    last_activity = time.monotonic()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        _reap(children)
        if not children and time.monotonic() - last_activity > IDLE_EXIT:
            return 0
        if not poller.poll(1000):
            continue
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        last_activity = time.monotonic()
        with conn:
            pid = _spawn(conn, sock)
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


def _spawn(conn: socket.socket, sock: socket.socket) -> int:
    conn.settimeout(5)
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 1)
        request = marshal.loads(data)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        _reply(conn, error=f"bad request: {exc}")
        return 0
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

    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49 of proc(5))
    data = b"\0".join(a.encode() for a in args)[: end - start - 1]
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def _child(request: dict, listener: socket.socket) -> None:
    from .main import Flags
    from .start import run_daemon

    # the heap stays frozen: the collector would otherwise write into pages shared with the template
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.update(request.get("env", {}))
    flags = Flags(**request["flags"])
    set_process_title([sys.argv[0], "-namespace", flags.namespace, "-id", flags.id, "-address", flags.address])
    run_daemon(flags, request["bundle"], listener, request.get("options", b""))


def main(flags) -> int:
    from .start import zygote_path

    # Detached already by the start that spawned us; make sure nothing of containerd's is held.
    try:
        return serve(zygote_path(flags.address))
    except Exception as exc:  # the template is an optimisation: failing is not fatal to anyone
        print(f"zygote: {exc}", file=sys.stderr)
        return 1
