"""The parent's side of the fork protocol, driven without a fork: the test plays the child on the other end
of a socketpair, so each order of messages in process.py's table (and each way it can break) is checked."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from pyoci.runtime import kernel as k
from pyoci.runtime import process as proc
from pyoci.runtime.errors import SetupError

PID = 4242


@pytest.fixture
def pair():
    parent, child = proc._pair()
    parent.sock.settimeout(5)
    yield parent, child
    parent.close()
    child.close()


def plan(terminal: bool = False, notify: bool = False) -> proc.Plan:
    seccomp = (b"", k.SECCOMP_FILTER_FLAG_NEW_LISTENER) if notify else None
    return proc.Plan(process=None, terminal=terminal, seccomp=seccomp)  # the sequence never reads the process


def open_fds() -> set[str]:
    """Open fds (the listing's own fd is in each, under a number that can be reused: compare sizes)."""
    return set(os.listdir("/proc/self/fd"))


class Recorder:
    """The runtime's callbacks, recording their calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.seen_fd_open = False

    def hooks(self, pid: int) -> dict:
        self.calls.append(("hooks", pid))
        return {"id": "c1", "pid": pid, "status": "created"}

    def seccomp(self, pid: int, fd: int) -> None:
        self.seen_fd_open = os.fstat(fd) is not None
        self.calls.append(("seccomp", pid))

    def cgroup(self, pid: int, **kw) -> None:
        self.calls.append(("cgroup", pid, kw))


def test_a_sync_then_cgroup_then_go_then_pid(pair):
    parent, child = pair
    rec = Recorder()
    child.send(proc.Sync())
    child.send(proc.Pid(PID + 1))
    assert proc._parent_a(parent, plan(), PID, rec.cgroup, cloned_into_cgroup=False) == PID + 1
    assert rec.calls == [("cgroup", PID, {})]
    assert child.recv() == proc.Go()


def test_a_cloned_into_its_cgroup_joins_only_the_v1_hierarchies(pair):
    parent, child = pair
    rec = Recorder()
    child.send(proc.Sync())
    child.send(proc.Pid(PID + 1))
    proc._parent_a(parent, plan(), PID, rec.cgroup, cloned_into_cgroup=True)
    assert rec.calls == [("cgroup", PID, {"unified": False})]


def test_a_that_dies_before_sync_is_a_clear_error_and_nothing_is_placed(pair):
    parent, child = pair
    rec = Recorder()
    child.close()
    with pytest.raises(SetupError) as err:
        proc._parent_a(parent, plan(), PID, rec.cgroup, cloned_into_cgroup=False)
    assert err.value.errno == errno.EPIPE and rec.calls == []


def test_init_hooks_run_between_hooks_and_go_and_carry_the_state(pair):
    parent, child = pair
    rec = Recorder()
    child.send(proc.Hooks())
    child.send(proc.Ready())
    assert proc._parent_init(parent, plan(), PID, rec.hooks, None) is None
    assert rec.calls == [("hooks", PID)]
    assert child.recv() == proc.Go(state={"id": "c1", "pid": PID, "status": "created"})


def test_init_with_a_terminal_and_a_notify_filter(pair):
    parent, child = pair
    rec = Recorder()
    pty_r, pty_w = os.pipe()
    notify_r, notify_w = os.pipe()
    child.send(proc.Hooks())
    child.send(proc.Console("/dev/pts/0", pty_r))
    child.send(proc.SeccompFd(notify_r))
    child.send(proc.Ready())
    for fd in (pty_r, notify_r):
        os.close(fd)
    before = open_fds()
    console = proc._parent_init(parent, plan(terminal=True, notify=True), PID, rec.hooks, rec.seccomp)
    try:
        assert rec.calls == [("hooks", PID), ("seccomp", PID)] and rec.seen_fd_open
        assert len(open_fds()) == len(before) + 1  # the console; the notify fd was handed on and closed
        assert fcntl_cloexec(console)
    finally:
        os.close(console)
        os.close(pty_w)
        os.close(notify_w)


def test_an_error_instead_of_hooks_is_the_childs_step_and_errno_and_no_hook_runs(pair):
    parent, child = pair
    rec = Recorder()
    child.send(proc.Error("mount proc on /proc", errno.EPERM, "source 'proc'"))
    with pytest.raises(SetupError) as err:
        proc._parent_init(parent, plan(), PID, rec.hooks, None)
    assert (err.value.step, err.value.errno) == ("mount proc on /proc", errno.EPERM)
    assert rec.calls == []


def test_a_failure_after_the_console_closes_it(pair):
    parent, child = pair
    rec = Recorder()
    r, w = os.pipe()
    child.send(proc.Hooks())
    child.send(proc.Console("/dev/pts/0", r))
    child.send(proc.Error("apply seccomp", errno.EINVAL))
    os.close(r)
    before = open_fds()
    with pytest.raises(SetupError):
        proc._parent_init(parent, plan(terminal=True), PID, rec.hooks, None)
    assert len(open_fds()) == len(before)
    os.close(w)


def test_ready_before_the_console_is_out_of_sequence(pair):
    parent, child = pair
    child.send(proc.Hooks())
    child.send(proc.Ready())
    with pytest.raises(SetupError) as err:
        proc._parent_init(parent, plan(terminal=True), PID, Recorder().hooks, None)
    assert err.value.errno == errno.EPROTO and "expected Console" in str(err.value)


def test_a_notify_fd_without_an_agent_is_refused_and_closed(pair):
    parent, child = pair
    r, w = os.pipe()
    child.send(proc.Hooks())
    child.send(proc.SeccompFd(r))
    os.close(r)
    before = open_fds()
    with pytest.raises(SetupError, match="no agent"):
        proc._parent_init(parent, plan(notify=True), PID, Recorder().hooks, None)
    assert len(open_fds()) == len(before)
    os.close(w)


def test_exec_succeeds_at_eof(pair):
    parent, child = pair
    child.close()
    assert proc._parent_exec(parent, plan(), PID, None) is None


def test_exec_with_a_terminal_returns_its_console_at_eof(pair):
    parent, child = pair
    r, w = os.pipe()
    child.send(proc.Console("/dev/pts/1", r))
    child.close()
    os.close(r)
    console = proc._parent_exec(parent, plan(terminal=True), PID, None)
    assert console is not None
    os.close(console)
    os.close(w)


def test_exec_error_and_a_message_after_the_sequence(pair):
    parent, child = pair
    child.send(proc.Error("execve", errno.ENOENT, "sh"))
    with pytest.raises(SetupError) as err:
        proc._parent_exec(parent, plan(), PID, None)
    assert (err.value.step, err.value.errno) == ("execve", errno.ENOENT)


def test_exec_refuses_anything_but_eof_at_the_end(pair):
    parent, child = pair
    child.send(proc.Ready())
    with pytest.raises(SetupError) as err:
        proc._parent_exec(parent, plan(), PID, None)
    assert err.value.errno == errno.EPROTO and "expected EOF" in str(err.value)


def fcntl_cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
