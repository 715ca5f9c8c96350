"""Seccomp user notification (SCMP_ACT_NOTIFY, linux.seccomp.listenerPath) through the CLI and containerd.

A small seccomp agent runs in a thread of the test: it listens on a unix socket, receives the notify fd
and the container process state, and answers notifications with the kernel's ioctls (through ctypes):
``mkdir`` "succeeds" without making anything, ``connect`` is logged (address read from the caller's
memory) and let through. Error cases: no listener, a refused connection, a listener that hangs up.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyoci.runtime.seccomp import _lib as libseccomp

RUNTIME = "io.containerd.pyoci.v2"
METADATA = "agent-meta-1"

# ------------------------------------------------------------------------------------ the kernel's ABI

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_SECCOMP = 317  # x86_64
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1


class SeccompData(ctypes.Structure):
    _fields_ = [
        ("nr", ctypes.c_int),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("data", SeccompData)]


class SeccompNotifResp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32), ("flags", ctypes.c_uint32)]


class SeccompNotifSizes(ctypes.Structure):
    _fields_ = [("notif", ctypes.c_uint16), ("notif_resp", ctypes.c_uint16), ("data", ctypes.c_uint16)]


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("!") << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV = _iowr(0, ctypes.sizeof(SeccompNotif))
SECCOMP_IOCTL_NOTIF_SEND = _iowr(1, ctypes.sizeof(SeccompNotifResp))
SECCOMP_IOCTL_NOTIF_ID_VALID = (1 << 30) | (8 << 16) | (ord("!") << 8) | 2  # _IOW('!', 2, __u64)


def _ioctl(fd: int, request: int, arg) -> None:
    if _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.byref(arg)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def check_struct_sizes() -> None:
    sizes = SeccompNotifSizes()
    assert _libc.syscall(_SYS_SECCOMP, SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes)) == 0, ctypes.get_errno()
    ours = (ctypes.sizeof(SeccompNotif), ctypes.sizeof(SeccompNotifResp), ctypes.sizeof(SeccompData))
    assert (sizes.notif, sizes.notif_resp, sizes.data) == ours


def _nr(name: str) -> int:
    return libseccomp().seccomp_syscall_resolve_name(name.encode())


# ------------------------------------------------------------------------------------------ the agent


@dataclass
class Received:
    doc: dict  # the container process state
    nspid: list[str]  # NSpid of doc["pid"] when it arrived


@dataclass
class Agent:
    """A seccomp agent on ``path``; ``hang_up`` makes it close every connection unread."""

    path: str
    hang_up: bool = False
    received: list[Received] = field(default_factory=list)
    log: list[tuple] = field(default_factory=list)  # ("mkdir", pid, path) / ("connect", pid, host, port)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_struct_sizes()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self._stop = threading.Event()
        self._fds: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.mkdir_nrs = {_nr("mkdir"), _nr("mkdirat")}
        self.connect_nr = _nr("connect")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.sock.close()
        for fd in self._fds:
            os.close(fd)
        assert not self.errors, self.errors

    def wait_for(self, count: int, what: str = "received", timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(getattr(self, what)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(getattr(self, what)) >= count, (what, getattr(self, what))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                for fd in self._fds:
                    poller.register(fd, select.POLLIN)
                for fd, events in poller.poll(100):
                    if fd == self.sock.fileno():
                        self._accept()
                    elif events & select.POLLIN:
                        self._answer(fd)
                    elif events & (select.POLLHUP | select.POLLERR):
                        self._fds.remove(fd)  # no process uses the filter any more
                        os.close(fd)
        except Exception as exc:  # reported by stop()
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _accept(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            if self.hang_up:
                return
            conn.settimeout(5)
            data, fds = b"", []
            while True:
                chunk, more, _flags, _addr = socket.recv_fds(conn, 65536, 4)
                fds += more
                if not chunk:
                    break
                data += chunk
            doc = json.loads(data)
            if len(fds) != 1:
                self.errors.append(f"expected one fd, got {fds}")
            self._fds += fds
            self.received.append(Received(doc, _nspid(doc["pid"])))

    def _answer(self, fd: int) -> None:
        req = SeccompNotif()  # the kernel wants it zeroed
        try:
            _ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, req)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the caller died meanwhile
                return
            raise
        resp = SeccompNotifResp(id=req.id, val=0, error=0, flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        nr, args = req.data.nr, req.data.args
        if nr in self.mkdir_nrs:
            path = _read_string(req.pid, args[1] if nr == _nr("mkdirat") else args[0])
            resp.flags = 0  # "success", and nothing made
            entry = ("mkdir", req.pid, path)
        elif nr == self.connect_nr:
            entry = ("connect", req.pid, *_read_sockaddr(req.pid, args[1], args[2]))
        else:
            entry = ("other", req.pid, nr)
        # what was read from the caller's memory is trustworthy only if the request is still pending
        try:
            _ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.c_uint64(req.id))
            self.log.append(entry)
            _ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, resp)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def _read_mem(pid: int, addr: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, addr)
    finally:
        os.close(fd)


def _read_string(pid: int, addr: int) -> str:
    return _read_mem(pid, addr, 256).split(b"\0", 1)[0].decode()


def _read_sockaddr(pid: int, addr: int, size: int) -> tuple:
    raw = _read_mem(pid, addr, min(size, 128))
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntoa(raw[4:8]), port
    return ("family", family)


def _nspid(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split()[1:] for line in f if line.startswith("NSpid:"))
    except (OSError, StopIteration):
        return []


@pytest.fixture
def agent_dir():
    base = tempfile.mkdtemp(prefix="pyoci-agent-", dir="/tmp")
    yield Path(base)
    for p in Path(base).iterdir():
        p.unlink()
    os.rmdir(base)


@pytest.fixture
def agent(agent_dir):
    a = Agent(str(agent_dir / "agent.sock"))
    yield a
    a.stop()


def notify_profile(listener: str) -> dict:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": listener,
        "listenerMetadata": METADATA,
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"},
            {"names": ["connect"], "action": "SCMP_ACT_NOTIFY"},
        ],
    }


# what the container runs: mkdir "succeeds" and makes nothing; a connect is logged; no notify fd in sight
SCRIPT = (
    "mkdir /x && echo mkdir-ok; ls -d /x 2>/dev/null || echo no-x; nc 127.0.0.1 9 </dev/null 2>/dev/null; "
    "echo notify-fds=$(for f in /proc/self/fd/* /proc/1/fd/*; do readlink $f; done | grep -c 'seccomp notify')"
)


def check_doc(received: Received, cid: str, status: str, pid: int | None = None) -> None:
    doc = received.doc
    assert doc["ociVersion"] == "1.2.0" and doc["fds"] == ["seccompFd"] and doc["metadata"] == METADATA, doc
    assert doc["state"]["id"] == cid and doc["state"]["status"] == status, doc
    if pid is not None:
        assert doc["pid"] == pid, (doc, pid)


# ------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_cli_run_init(bundle, agent, no_new_privileges):
    c = bundle.config
    c["linux"]["seccomp"] = notify_profile(agent.path)
    c["process"]["noNewPrivileges"] = no_new_privileges
    c["process"]["args"] = ["sh", "-c", SCRIPT]
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["mkdir-ok", "no-x", "notify-fds=0"], result.stdout
    assert not (bundle.path / "rootfs" / "x").exists()
    assert len(agent.received) == 1
    got = agent.received[0]
    check_doc(got, bundle.id, "creating")
    # the pid is the container's init (pid 1 in its namespace), and the state names it too
    assert got.nspid == [str(got.doc["pid"]), "1"] and got.doc["state"]["pid"] == got.doc["pid"], got
    assert [e[0] for e in agent.log] == ["mkdir", "connect"], agent.log
    assert agent.log[0][2] == "/x" and agent.log[1][2:] == ("127.0.0.1", 9), agent.log


def test_cli_exec_gets_the_containers_profile(bundle, agent):
    c = bundle.config
    c["linux"]["seccomp"] = notify_profile(agent.path)
    c["process"]["args"] = ["sleep", "1000"]
    bundle.write()
    bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id, check=True)
    agent.wait_for(1)
    init_pid = json.loads(bundle.pyoci("state", bundle.id, check=True).stdout)["pid"]
    check_doc(agent.received[0], bundle.id, "creating", init_pid)
    bundle.pyoci("start", bundle.id, check=True)
    result = bundle.pyoci("exec", bundle.id, "mkdir", "/y")
    assert result.returncode == 0, result.stderr
    agent.wait_for(2)
    exec_doc = agent.received[1]
    check_doc(exec_doc, bundle.id, "running")
    assert exec_doc.doc["state"]["pid"] == init_pid and exec_doc.doc["pid"] != init_pid, exec_doc
    # the notification came from the process the state named
    assert agent.log == [("mkdir", exec_doc.doc["pid"], "/y")], agent.log
    check = bundle.pyoci("exec", bundle.id, "sh", "-c", "ls -d /y 2>&1; ls -l /proc/1/fd /proc/self/fd")
    assert "No such file" in check.stdout and "seccomp" not in check.stdout, check.stdout
    # what the container would see if it held one (the agent does): the check above looks for the right name
    assert os.readlink(f"/proc/self/fd/{agent._fds[0]}") == "anon_inode:seccomp notify"
    assert len(agent.received) == 3  # every exec'd process gets the filter and its own listener
    bundle.pyoci("kill", bundle.id, "KILL", check=True)


@pytest.mark.parametrize("listener", ["absent", "refused"])
def test_cli_no_listener_fails_create_and_leaves_nothing(bundle, agent_dir, listener):
    path = str(agent_dir / "agent.sock")
    if listener == "refused":  # a socket nobody listens on
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    bundle.config["linux"]["seccomp"] = notify_profile(path)
    bundle.write()
    try:
        result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    finally:
        if listener == "refused":
            sock.close()
    assert result.returncode != 0
    assert f"connect to the seccomp agent: linux.seccomp.listenerPath {path}" in result.stderr, result.stderr
    assert ("ENOENT" if listener == "absent" else "ECONNREFUSED") in result.stderr, result.stderr
    assert not (bundle.root / bundle.id).exists()  # the bundle fixture checks cgroups and mounts


def test_cli_listener_that_hangs_up(bundle, agent_dir):
    """The agent accepts and closes unread: the fd dies with the connection, and a notified syscall fails
    with ENOSYS (the kernel's answer when no listener is left) — or create fails naming the path."""
    agent = Agent(str(agent_dir / "agent.sock"), hang_up=True)
    try:
        bundle.config["linux"]["seccomp"] = notify_profile(agent.path)
        bundle.config["process"]["args"] = ["sh", "-c", "mkdir /x || echo mkdir-failed"]
        bundle.write()
        started = time.monotonic()
        result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
        assert time.monotonic() - started < 20
    finally:
        agent.stop()
    if result.returncode == 0:
        assert "Function not implemented" in result.stderr and result.stdout == "mkdir-failed\n", result
    else:
        assert agent.path in result.stderr, result.stderr
    assert not (bundle.path / "rootfs" / "x").exists()


def test_cli_notify_without_listener_path_is_refused(bundle):
    profile = notify_profile("")
    del profile["listenerPath"]
    bundle.config["linux"]["seccomp"] = profile
    bundle.write()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode != 0 and "linux.seccomp.listenerPath" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------ containerd


def test_containerd_run_and_exec(ctr, busybox_image, container_id, agent, agent_dir):
    profile = agent_dir / "profile.json"
    profile.write_text(json.dumps(notify_profile(agent.path)))
    ctr(
        "run", "-d", "--runtime", RUNTIME, "--seccomp", "--seccomp-profile", str(profile),
        busybox_image, container_id, "sleep", "1000",
    )  # fmt: skip
    agent.wait_for(1)
    init_pid = ctr.task_pid(container_id)
    check_doc(agent.received[0], container_id, "creating", init_pid)
    result = ctr("task", "exec", "--exec-id", "e1", container_id, "sh", "-c", SCRIPT)
    assert result.stdout.splitlines() == ["mkdir-ok", "no-x", "notify-fds=0"], result.stdout
    agent.wait_for(2)
    check_doc(agent.received[1], container_id, "running")
    assert agent.received[1].doc["state"]["pid"] == init_pid
    assert [e[0] for e in agent.log] == ["mkdir", "connect"] and agent.log[1][2:] == ("127.0.0.1", 9), agent.log
    ctr.remove(container_id)


def test_containerd_no_listener_fails_clearly(ctr, busybox_image, container_id, agent_dir):
    path = str(agent_dir / "absent.sock")
    profile = agent_dir / "profile.json"
    profile.write_text(json.dumps(notify_profile(path)))
    result = ctr(
        "run", "--rm", "--runtime", RUNTIME, "--seccomp", "--seccomp-profile", str(profile),
        busybox_image, container_id, "true", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"connect to the seccomp agent: linux.seccomp.listenerPath {path}" in result.stderr, result.stderr
    ctr("containers", "delete", container_id, check=False)
    assert container_id not in ctr("tasks", "list").stdout
