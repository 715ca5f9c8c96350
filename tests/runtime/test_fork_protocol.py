"""The fork protocol's channel: typed messages, framing, fds, and how the expected sequence fails."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading

import pytest

from pyoci.runtime import process as proc
from pyoci.runtime.errors import SetupError


@pytest.fixture
def pair():
    a, b = proc._pair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize(
    "msg",
    [proc.Sync(), proc.Go(), proc.Go(state={"id": "c1", "pid": 7}), proc.Pid(42), proc.Hooks(), proc.Ready(),
     proc.Error("mount proc on /proc", errno.EPERM, "source 'proc'")],
    ids=lambda m: type(m).__name__,
)  # fmt: skip
def test_every_message_round_trips(pair, msg):
    a, b = pair
    a.send(msg)
    assert b.recv() == msg


def test_a_console_carries_its_fd_close_on_exec(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        a.send(proc.Console(name="/dev/pts/3", fd=w))
        got = b.recv()
        assert isinstance(got, proc.Console) and got.name == "/dev/pts/3"
        assert fcntl.fcntl(got.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(got.fd, b"x")
        assert os.read(r, 1) == b"x"
        os.close(got.fd)
    finally:
        os.close(r)
        os.close(w)


def test_a_state_of_fifty_megabytes_fits(pair):
    a, b = pair
    state = {"annotations": {"big": "a" * (50 << 20)}}
    sender = threading.Thread(target=a.send, args=(proc.Go(state=state),))
    sender.start()
    got = b.recv()
    sender.join()
    assert got == proc.Go(state=state)


def test_messages_keep_their_order_and_boundaries(pair):
    a, b = pair
    for msg in (proc.Hooks(), proc.Pid(1), proc.Ready()):
        a.send(msg)
    assert [b.recv() for _ in range(3)] == [proc.Hooks(), proc.Pid(1), proc.Ready()]


def test_expect_raises_the_childs_error_as_step_and_errno(pair):
    a, b = pair
    a.send(proc.Error("pivot_root", errno.EINVAL, "/rootfs"))
    with pytest.raises(SetupError) as failure:
        b.expect(proc.Hooks)
    assert (failure.value.step, failure.value.errno, failure.value.detail) == ("pivot_root", errno.EINVAL, "/rootfs")


def test_expect_refuses_a_message_out_of_sequence(pair):
    a, b = pair
    a.send(proc.Hooks())  # e.g. B's first message where A's Pid is due
    with pytest.raises(SetupError) as failure:
        b.expect(proc.Pid)
    assert failure.value.errno == errno.EPROTO and "expected Pid" in str(failure.value)


def test_eof_is_none_and_expect_names_what_it_waited_for(pair):
    a, b = pair
    a.close()
    assert b.recv() is None
    with pytest.raises(SetupError) as failure:
        b.expect(proc.Go, "the runtime went away")
    assert failure.value.errno == errno.EPIPE and "the runtime went away" in str(failure.value)


def test_truncated_and_malformed_frames_are_protocol_errors():
    for frame in (struct.pack("!I", 10) + b"{}", struct.pack("!I", 2) + b"[]", struct.pack("!I", 9) + b'{"t":"X"}'):
        raw_a, raw_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            raw_a.sendall(frame)
            raw_a.close()
            with pytest.raises(SetupError) as failure:
                proc.Channel(raw_b).recv()
            assert failure.value.errno == errno.EPROTO, frame
        finally:
            raw_b.close()


def test_an_oversized_length_is_refused_before_reading_it(pair):
    a, b = pair
    a.sock.sendall(struct.pack("!I", proc.MAX_MESSAGE + 1))
    with pytest.raises(SetupError) as failure:
        b.recv()
    assert failure.value.errno == errno.EMSGSIZE


def test_a_timeout_names_the_message_waited_for(pair):
    _a, b = pair
    b.sock.settimeout(0.05)
    with pytest.raises(SetupError) as failure:
        b.expect(proc.Ready)
    assert failure.value.errno == errno.ETIMEDOUT and "Ready" in str(failure.value)
