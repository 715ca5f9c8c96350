"""The shim template: fds it receives are close-on-exec, it removes its socket, a newer build retires it."""

import array
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pyoci.shim.zygote import receive

SERVE = "import sys; from pyoci.shim.zygote import serve; sys.exit(serve(sys.argv[1], sys.argv[2], float(sys.argv[3])))"


def test_received_fds_are_close_on_exec():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    passed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.sendmsg([b"req"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [passed.fileno()]))])
        data, fds = receive(b)
        assert data == b"req" and len(fds) == 1
        assert not os.get_inheritable(fds[0]), "a received fd would leak into what the shim executes"
        os.close(fds[0])
    finally:
        for s in (a, b, passed):
            s.close()


def test_surplus_fds_are_closed_and_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        a.sendmsg([b"req"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w, r]))])
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError):
            receive(b)
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def start_template(path: str, record: str, idle: float = 30.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, path, record, str(idle)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"template exited {proc.returncode}: {proc.stderr.read().decode()}")
        if os.path.exists(record) and open(record).read() == path:  # ready: preloaded and named current
            return proc
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError("template not ready in 30 s")


def ended(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_idle_template_removes_its_socket_and_record(tmp_path):
    path, record = str(tmp_path / "t.sock"), str(tmp_path / "t.zygote")
    proc = start_template(path, record, idle=0.5)
    assert os.path.exists(path)
    assert ended(proc) == 0
    assert not os.path.exists(path), "the template left its socket behind"
    assert not os.path.exists(record)


def test_sigterm_removes_the_socket(tmp_path):
    path, record = str(tmp_path / "t.sock"), str(tmp_path / "t.zygote")
    proc = start_template(path, record)
    proc.send_signal(signal.SIGTERM)
    assert ended(proc) == 128 + signal.SIGTERM
    assert not os.path.exists(path) and not os.path.exists(record)


def test_a_newer_template_retires_the_older_one(tmp_path):
    old_path, new_path, record = str(tmp_path / "old.sock"), str(tmp_path / "new.sock"), str(tmp_path / "t.zygote")
    old = start_template(old_path, record)
    new = start_template(new_path, record)
    try:
        assert ended(old) == 0, "the old template did not retire"
        assert not os.path.exists(old_path)
        assert os.path.exists(new_path) and new.poll() is None
        assert open(record).read() == new_path
    finally:
        new.send_signal(signal.SIGTERM)
        ended(new)
    assert not os.path.exists(record)
