"""Where the shim keeps things: state and socket directories, socket names, the build id, atomic writes, unix sockets.

A leaf module on the path of every ``start`` and ``delete``: builtin C modules only (``_socket``, ``_sha256``).
"""

import _socket
import errno
import os
import sys

try:
    from _sha256 import sha256  # CPython <= 3.11
except ImportError:  # pragma: no cover - CPython 3.12+
    from _sha2 import sha256

STATE_ROOT = "/run/containerd/pyoci"
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
    """The ``unix://`` address of the shim serving ``group`` of ``namespace`` for this containerd."""
    digest = sha256(os.path.join(grpc_address, namespace, group).encode()).hexdigest()
    return f"unix://{SOCKET_DIR}/{digest}"


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


def write_atomic(path: str, data: str) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def unix_socket(kind: int = _socket.SOCK_STREAM) -> _socket.socket:
    """A close-on-exec AF_UNIX socket (``_socket``'s: the ``socket`` module imports ``enum``)."""
    return _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)


def listen(path: str, kind: int = _socket.SOCK_STREAM, backlog: int = 128) -> _socket.socket | None:
    """A listening socket bound at ``path`` (mode 0600), or None if a live process already serves it; the
    stale socket file of a dead one is replaced."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    for _ in range(2):
        sock = unix_socket(kind)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            probe = unix_socket(kind)
            try:
                probe.connect(path)
                return None  # a live server: join it
            except OSError:
                os.unlink(path)  # stale socket of a dead server
                continue
            finally:
                probe.close()
        os.chmod(path, 0o600)
        sock.listen(backlog)
        return sock
    raise OSError(errno.EADDRINUSE, f"cannot create socket {path}")
