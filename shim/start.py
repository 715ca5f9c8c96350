"""``containerd-shim-pyoci-v2 start``: make (or find) the shim's socket, fork the daemon, print the address.

Kept lean (json, hashlib, socket, os): containerd runs it synchronously for every container. The daemon
is this same process forked, not a second interpreter: it detaches (new session, stdio to /dev/null so
that containerd's read of our output ends when we exit), then imports the server.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys

SOCKET_DIR = "/run/containerd/s"
GROUP_ANNOTATIONS = ("io.containerd.pyoci.v2.group", "io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")


def group_id(bundle: str, container_id: str) -> str:
    """The shim grouping key: a group/sandbox annotation (one shim per pod), else the container id."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            annotations = json.load(f).get("annotations") or {}
    except (OSError, ValueError):
        annotations = {}
    for key in GROUP_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return container_id


def socket_address(grpc_address: str, namespace: str, group: str) -> str:
    digest = hashlib.sha256(os.path.join(grpc_address, namespace, group).encode()).hexdigest()
    return f"unix://{SOCKET_DIR}/{digest}"


def _listen(path: str) -> socket.socket | None:
    """A listening socket at ``path``, or None if a live shim already serves it."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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


def _write_atomic(path: str, data: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def start(flags) -> int:
    options = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    bundle = flags.bundle or os.getcwd()
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
        _write_atomic(os.path.join(bundle, "address"), address)
        sys.stdout.write(address)
        return 0
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _daemon(flags, bundle, listener, options)  # never returns
    listener.close()
    try:
        _write_atomic(os.path.join(bundle, "address"), address)
        _write_atomic(os.path.join(bundle, "shim.pid"), str(pid))
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


def _daemon(flags, bundle: str, listener: socket.socket, options: bytes) -> None:
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
        from .daemon import run

        code = run(flags, listener, options)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
