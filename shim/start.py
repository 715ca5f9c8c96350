"""``containerd-shim-pyoci-v2 start``: make (or find) the shim's socket, have the daemon forked, print the address.

Kept lean: containerd runs it synchronously for every container, so its imports are latency. It uses
the interpreter's builtin C modules (``_socket``, ``_sha256``, ``marshal``) rather than ``socket``,
``hashlib`` and ``json`` (19 ms, mostly ``enum`` and ``re``), and parses config.json only when it names
a group. The daemon is forked from this process or from the template (``zygote.py``), never a second
interpreter start: it detaches (new session, stdio to /dev/null, so that containerd's read of our
output ends when we exit), then imports the server.
"""

import _socket
import marshal
import os
import sys

from .paths import (
    build_id,
    group_id,
    listen,
    socket_address,
    unix_socket,
    write_atomic,
    zygote_path,
    zygote_record,  # noqa: F401 - integration/containment/test_template_upgrade.py imports it from here
)


def start(flags) -> int:
    bundle = flags.bundle = flags.bundle or os.getcwd()  # containerd 1.6 passes it as our cwd only
    if not flags.id or not flags.namespace:
        print("start: -id and -namespace are required", file=sys.stderr)
        return 1
    address = socket_address(flags.address, flags.namespace, group_id(bundle, flags.id))
    path = address.removeprefix("unix://")
    try:
        listener = listen(path)
    except OSError as exc:
        print(f"start: create socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if listener is None:
        write_atomic(os.path.join(bundle, "address"), address)
        sys.stdout.write(address)
        return 0
    sys.stdout.flush()
    pid = _ask_template(flags, bundle, listener)
    if pid is None:
        pid = os.fork()
        if pid == 0:
            run_daemon(flags, bundle, listener)  # never returns
        _spawn_template(flags)
    listener.close()
    try:
        write_atomic(os.path.join(bundle, "address"), address)  # (shim.pid is written by the daemon itself)
        _raise_oom_score(pid)
    except OSError as exc:
        os.kill(pid, 9)
        os.unlink(path)
        print(f"start: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(address)
    return 0


def _raise_oom_score(pid: int) -> None:
    """The shim should die before its containers under memory pressure: its score is ours + 1."""
    try:
        with open("/proc/self/oom_score_adj") as f:
            score = int(f.read())
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(min(score + 1, 1000)))
    except (OSError, ValueError):
        pass


_PASSED_ENV = ("TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION", "SCHED_CORE")


def _ask_template(flags, bundle: str, listener: _socket.socket) -> int | None:
    """Have the template (``zygote.py``) fork the daemon: a pre-imported child. None if there is none.
    The request is a ``marshal``ed dict (both ends are this interpreter) with the listener attached."""
    conn = unix_socket(_socket.SOCK_SEQPACKET)
    conn.settimeout(2)
    try:
        conn.connect(zygote_path(flags.address, build_id()))
        conn.settimeout(30)  # once it has the listener, wait for its answer rather than fork a second daemon
        request = {
            "flags": {
                "namespace": flags.namespace,
                "address": flags.address,
                "id": flags.id,
                "bundle": bundle,
                "publish_binary": flags.publish_binary,
                "debug": flags.debug,
            },
            "bundle": bundle,
            "env": {k: os.environ[k] for k in _PASSED_ENV if k in os.environ},
        }
        # one C int (not `array`, which imports collections)
        fds = listener.fileno().to_bytes(4, sys.byteorder, signed=True)
        conn.sendmsg([marshal.dumps(request)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        reply = marshal.loads(conn.recv(4096) or marshal.dumps({}))
        return int(reply["pid"]) if "pid" in reply else None
    except (OSError, ValueError, KeyError, EOFError, TypeError):
        return None
    finally:
        conn.close()


def _spawn_template(flags) -> None:
    """Start a template for the next containers, detached (it must not hold containerd's pipes)."""
    if not flags.address:
        return
    pid = os.fork()
    if pid != 0:
        return
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.chdir("/")
        if os.fork() == 0:  # not our child: start must not wait for it, nor leave it a zombie
            padding = " " * 512  # room for the shims it forks to rewrite their argv (zygote.set_process_title)
            script = sys.argv[0]
            # our lean entry script finds its own site-packages under -I -S (no `site` scan, no environment)
            lean = ["-I", "-S"] if os.path.basename(script) == "containerd-shim-pyoci-v2" else []
            os.execv(sys.executable, [sys.executable, *lean, script, "-address", flags.address, "zygote", padding])
    finally:
        os._exit(0)


def run_daemon(flags, bundle: str, listener) -> None:
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        try:
            log = os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(log, True)
            os.dup2(log, 2)
            os.close(log)
        except OSError:
            os.dup2(null, 2)
        os.close(null)
        os.chdir("/")
        sys.modules.setdefault("ssl", None)  # asyncio runs without it (the shim has no TLS): 8 ms of a cold start
        import socket

        from .daemon import run

        if not isinstance(listener, socket.socket):
            listener = socket.socket(fileno=listener.detach())
        code = run(flags, listener)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
