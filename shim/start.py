"""``containerd-shim-pyoci-v2 start``: make (or find) the shim's socket, have the daemon forked, print the address.

Kept lean: containerd runs it synchronously for every container, so its imports are latency. It uses
the interpreter's builtin C modules (``_socket``, ``_sha256``, ``marshal``) rather than ``socket``,
``hashlib`` and ``json`` (19 ms, mostly ``enum`` and ``re``), and parses config.json only when it names
a group. The daemon is forked from this process or from the template (``zygote.py``), never a second
interpreter start: it detaches (new session, stdio to /dev/null, so that containerd's read of our
output ends when we exit), then imports the server.
"""

from __future__ import annotations

import _socket
import array
import errno
import marshal
import os
import sys

try:
    from _sha256 import sha256  # CPython <= 3.11
except ImportError:  # pragma: no cover - CPython 3.12+
    from _sha2 import sha256

SOCKET_DIR = "/run/containerd/s"
GROUP_ANNOTATIONS = ("io.containerd.pyoci.v2.group", "io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")


def group_id(bundle: str, container_id: str) -> str:
    """The shim grouping key: a group/sandbox annotation (one shim per pod), else the container id."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            raw = f.read()
    except OSError:
        return container_id
    if not any(key.encode() in raw for key in GROUP_ANNOTATIONS):
        return container_id  # the common case: no JSON parsing needed
    import json

    try:
        annotations = json.loads(raw).get("annotations") or {}
    except (ValueError, AttributeError):
        return container_id
    for key in GROUP_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return container_id


def socket_address(grpc_address: str, namespace: str, group: str) -> str:
    digest = sha256(os.path.join(grpc_address, namespace, group).encode()).hexdigest()
    return f"unix://{SOCKET_DIR}/{digest}"


def _unix(kind: int = _socket.SOCK_STREAM) -> _socket.socket:
    return _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)


def _listen(path: str) -> _socket.socket | None:
    """A listening socket at ``path``, or None if a live shim already serves it."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = _unix()
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            probe = _unix()
            try:
                probe.connect(path)
                return None  # a live shim for this group: join it
            except OSError:
                os.unlink(path)  # stale socket of a dead shim
                continue
            finally:
                probe.close()
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"cannot create socket {path}")


def write_atomic(path: str, data: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def start(flags) -> int:
    options = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    bundle = flags.bundle = flags.bundle or os.getcwd()  # containerd 1.6 passes it as our cwd only
    if not flags.id or not flags.namespace:
        print("start: -id and -namespace are required", file=sys.stderr)
        return 1
    address = socket_address(flags.address, flags.namespace, group_id(bundle, flags.id))
    path = address.removeprefix("unix://")
    try:
        listener = _listen(path)
    except OSError as exc:
        print(f"start: create socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if listener is None:
        write_atomic(os.path.join(bundle, "address"), address)
        sys.stdout.write(address)
        return 0
    sys.stdout.flush()
    pid = _ask_template(flags, bundle, listener, options)
    if pid is None:
        pid = os.fork()
        if pid == 0:
            run_daemon(flags, bundle, listener, options)  # never returns
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


_PACKAGES = ("shim", "ttrpc", "protos", "runtime", "runtime/cgroups")  # pyoci's folders, installed or in a checkout


def build_id() -> str:
    """A short hash of the installed pyoci: the interpreter, and the name, size and mtime of each of its
    modules (~60 stat calls, well under a millisecond). A template serves only starts of its own build, so
    an upgrade (or an edit of an editable install) reaches the next container, not the next template."""
    base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = sha256(f"{os.path.realpath(sys.executable)}\0{base}\n".encode())
    for sub in _PACKAGES:
        try:
            entries = sorted(os.scandir(os.path.join(base, sub)), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".py"):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                digest.update(f"{sub}/{entry.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def zygote_path(grpc_address: str, build: str) -> str:
    """The socket of the template of this containerd and this build of pyoci."""
    digest = sha256(os.path.join(grpc_address, "pyoci-zygote", build).encode()).hexdigest()
    return f"{SOCKET_DIR}/{digest}"


def zygote_record(grpc_address: str) -> str:
    """The file naming the socket of this containerd's newest template (each new one retires the one named)."""
    digest = sha256(os.path.join(grpc_address, "pyoci-zygote").encode()).hexdigest()
    return f"{SOCKET_DIR}/{digest}.zygote"


_PASSED_ENV = ("TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION", "SCHED_CORE")


def _ask_template(flags, bundle: str, listener: _socket.socket, options: bytes) -> int | None:
    """Have the template (``zygote.py``) fork the daemon: a pre-imported child. None if there is none.
    The request is a ``marshal``ed dict (both ends are this interpreter) with the listener attached."""
    conn = _unix(_socket.SOCK_SEQPACKET)
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
            "options": options,
            "env": {k: os.environ[k] for k in _PASSED_ENV if k in os.environ},
        }
        fds = array.array("i", [listener.fileno()])
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
            os.execv(sys.executable, [sys.executable, sys.argv[0], "-address", flags.address, "zygote", padding])
    finally:
        os._exit(0)


def run_daemon(flags, bundle: str, listener, options: bytes) -> None:
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
        import socket

        from .daemon import run

        if not isinstance(listener, socket.socket):
            listener = socket.socket(fileno=listener.detach())
        code = run(flags, listener, options)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
