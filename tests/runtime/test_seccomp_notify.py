"""Seccomp user notification: the profile's rules, the container process state sent to the agent, the
hand-over of the notify fd (channel message, listener socket) and its errors."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
import threading

import pytest

from pyoci.runtime import kernel as k
from pyoci.runtime import process as proc
from pyoci.runtime.errors import ConfigError, SetupError
from pyoci.runtime.features import features
from pyoci.runtime.seccomp import (
    NOTIFY_REFUSED,
    compile_filter,
    notify_supported,
    process_state,
    send_to_listener,
    supported_actions,
)
from pyoci.runtime.spec import parse_spec

SECCOMP_RET_USER_NOTIF = 0x7FC00000
TSYNC = 1


def profile(**seccomp):
    config = {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs"},
        "linux": {
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "listenerPath": "/run/agent.sock",
                "listenerMetadata": "meta",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
                **seccomp,
            }
        },
    }
    config["linux"]["seccomp"] = {k: v for k, v in config["linux"]["seccomp"].items() if v is not None}
    return parse_spec(config).linux.seccomp


def test_listener_path_and_metadata_are_parsed():
    p = profile()
    assert (p.listener_path, p.listener_metadata) == ("/run/agent.sock", "meta")
    assert profile(listenerPath=None, listenerMetadata=None).listener_path == ""


def test_a_notify_filter_loads_with_new_listener_and_returns_user_notif():
    program, flags = compile_filter(profile(flags=["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]))
    # NEW_LISTENER added; TSYNC dropped (the kernel refuses both together; the process is single-threaded)
    assert flags == k.SECCOMP_FILTER_FLAG_NEW_LISTENER | 2
    returns = [k_ for code, _jt, _jf, k_ in struct.iter_unpack("=HBBI", program) if code == 0x06]  # BPF_RET|BPF_K
    assert SECCOMP_RET_USER_NOTIF in returns


def test_a_filter_without_notify_has_no_listener_even_with_a_listener_path():
    _program, flags = compile_filter(profile(syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]))
    assert not flags & k.SECCOMP_FILTER_FLAG_NEW_LISTENER


def test_notify_without_listener_path_names_the_field():
    with pytest.raises(ConfigError) as err:
        compile_filter(profile(listenerPath=None))
    assert err.value.path == "linux.seccomp.listenerPath"


def test_notify_as_default_action_is_refused():
    with pytest.raises(ConfigError) as err:
        compile_filter(profile(defaultAction="SCMP_ACT_NOTIFY", syscalls=None))
    assert err.value.path == "linux.seccomp.defaultAction"


@pytest.mark.parametrize("name", NOTIFY_REFUSED)
def test_notify_on_what_the_hand_over_needs_is_refused(name):
    rules = [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}, {"names": ["getpid", name], "action": "SCMP_ACT_NOTIFY"}]
    with pytest.raises(ConfigError) as err:
        compile_filter(profile(syscalls=rules))
    assert err.value.path == "linux.seccomp.syscalls[1].action" and name in err.value.reason


def test_the_container_process_state():
    state = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 42, "bundle": "/b"}
    assert process_state(profile(), 42, state) == {
        "ociVersion": "1.2.0",
        "fds": ["seccompFd"],
        "pid": 42,
        "metadata": "meta",
        "state": state,
    }
    assert "metadata" not in process_state(profile(listenerMetadata=None), 7, state)


def test_features_list_notify_from_the_code():
    assert notify_supported()  # this kernel has user notification
    got = features()
    assert got["linux"]["seccomp"]["actions"] == supported_actions()
    assert "SCMP_ACT_NOTIFY" in got["linux"]["seccomp"]["actions"]
    assert got["annotations"]["io.github.pyoci.seccomp.listener"] == "true"
    # what features lists is what compile_filter accepts
    for action in supported_actions():
        if action != "SCMP_ACT_NOTIFY":
            compile_filter(profile(syscalls=[{"names": ["mkdir"], "action": action}]))


# ------------------------------------------------------------------------------------- the hand-over


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "agent.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)
    yield path, sock
    sock.close()


def _receive(sock: socket.socket, out: list) -> None:
    conn, _ = sock.accept()
    with conn:
        data, fds = b"", []
        while True:
            chunk, more, _flags, _addr = socket.recv_fds(conn, 1 << 16, 4)
            fds += more
            if not chunk:
                break
            data += chunk
    out.append((json.loads(data), fds))


def test_send_to_listener_sends_the_state_and_the_fd(listener):
    path, sock = listener
    got: list = []
    receiver = threading.Thread(target=_receive, args=(sock, got))
    receiver.start()
    r, w = os.pipe()
    doc = {"ociVersion": "1.2.0", "fds": ["seccompFd"], "pid": 1, "state": {"annotations": {"a": "x" * 200_000}}}
    try:
        send_to_listener(path, w, doc)
        receiver.join(10)
        (received, fds), = got  # fmt: skip
        assert received == doc and len(fds) == 1
        os.write(fds[0], b"y")
        assert os.read(r, 1) == b"y"
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("case", ["absent", "refused"])
def test_no_listener_is_a_setup_error_naming_the_path(tmp_path, case):
    path = str(tmp_path / "agent.sock")
    bound = None
    if case == "refused":
        bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound.bind(path)  # never listens
    r, w = os.pipe()
    try:
        with pytest.raises(SetupError) as err:
            send_to_listener(path, w, {"pid": 1})
    finally:
        os.close(r)
        os.close(w)
        if bound is not None:
            bound.close()
    assert err.value.step == "connect to the seccomp agent"
    assert err.value.errno == (errno.ENOENT if case == "absent" else errno.ECONNREFUSED)
    assert path in str(err.value) and "linux.seccomp.listenerPath" in str(err.value)


def test_the_channel_carries_the_notify_fd_close_on_exec():
    a, b = proc._pair()
    r, w = os.pipe()
    try:
        a.send(proc.SeccompFd(fd=w))
        got = b.recv()
        assert isinstance(got, proc.SeccompFd) and got.fd not in (-1, w)
        assert fcntl.fcntl(got.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.close(got.fd)
        a.send(proc.SeccompFd(fd=w))  # where another message is expected, its fd is closed, not leaked
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(SetupError):
            b.expect(proc.Ready)
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_a_process_loading_the_filter_hands_over_its_notify_fd_and_keeps_none():
    """The child step for real, in a forked process: the runtime gets a seccomp notify fd, the process
    (which then lists its own fds) has none left."""
    program = compile_filter(profile())
    a, b = proc._pair()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
            proc._load_seccomp(program, a)
            links = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    links.append(os.readlink(f"/proc/self/fd/{fd}"))
                except FileNotFoundError:  # listdir's own fd
                    pass
            os.write(w, json.dumps(links).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    a.close()
    try:
        got = b.expect(proc.SeccompFd)
        assert os.readlink(f"/proc/self/fd/{got.fd}") == "anon_inode:seccomp notify"
        os.close(got.fd)
        links = json.loads(os.read(r, 1 << 16))
        assert not [link for link in links if "seccomp" in link], links
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(r)
        b.close()
    assert os.waitstatus_to_exitcode(status) == 0
