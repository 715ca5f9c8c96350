"""containerd's own runc shim driving pyoci as its runtime binary (``ctr run --runc-binary pyoci``):
the runtime core speaks runc's command line well enough for the reference shim."""

import json
import sys
import time
from pathlib import Path

import pytest

PYOCI = str(Path(sys.executable).parent / "pyoci")


@pytest.fixture
def run(ctr, busybox_image, container_id):
    def run(*args, check=False, **kw):
        return ctr("run", "--runc-binary", PYOCI, *args[:-1], busybox_image, container_id, *args[-1], check=check, **kw)

    return run


def wait_status(ctr, cid, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = next((li for li in ctr("tasks", "list").stdout.splitlines() if li.split()[:1] == [cid]), "")
        if status in line:
            return line
        time.sleep(0.05)
    raise AssertionError(f"{cid} never became {status}: {ctr('tasks', 'list').stdout}")


def test_echo_hello(run):
    result = run("--rm", ["echo", "hello"])
    assert result.returncode == 0 and result.stdout == "hello\n", result.stderr


def test_exit_status(run):
    assert run("--rm", ["sh", "-c", "exit 3"]).returncode == 3


def test_detached_exec_ps_pause_resume_kill(ctr, run, container_id):
    run("-d", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], check=True)
    wait_status(ctr, container_id, "RUNNING")
    result = ctr(
        "tasks", "exec", "--exec-id", "e1", container_id, "sh", "-c", "echo out; echo err >&2; exit 5", check=False
    )
    assert (result.returncode, result.stdout, result.stderr.strip()) == (5, "out\n", "err")
    pids = [line.split()[0] for line in ctr("tasks", "ps", container_id).stdout.splitlines()[1:]]
    assert len(pids) == 3
    ctr("tasks", "pause", container_id)
    wait_status(ctr, container_id, "PAUSED")
    ctr("tasks", "resume", container_id)
    wait_status(ctr, container_id, "RUNNING")
    ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    wait_status(ctr, container_id, "STOPPED")
    ctr("tasks", "delete", container_id)
    ctr("containers", "delete", container_id)


def test_sigkill_from_outside_gives_137(ctr, busybox_image, container_id):
    with ctr.background("run", "--runc-binary", PYOCI, "--rm", busybox_image, container_id, "sleep", "1000") as runner:
        wait_status(ctr, container_id, "RUNNING")
        ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        assert runner.wait(20) == 137


def test_bad_binary_is_reported(run):
    result = run("--rm", ["/no/such/binary"])
    assert result.returncode != 0
    assert "/no/such/binary" in result.stderr


def test_the_runtime_state_is_pyocis(ctr, run, container_id):
    # the runc shim keeps its runtime's state under --root /run/containerd/runc/<ns>: ours has pyoci's shape
    run("-d", ["sleep", "1000"], check=True)
    state = json.loads(Path(f"/run/containerd/runc/{ctr.namespace}/{container_id}/state.json").read_text())
    assert state["id"] == container_id and state["pid_start"] > 0 and state["cgroup_paths"]


def test_terminal_through_the_console_socket(ctr, containerd, busybox_image, container_id):
    # containerd's runc shim passes --console-socket; pyoci hands the pty master over it as runc does
    from integration.test_terminal import screen_lines, under_a_terminal

    result = under_a_terminal(
        ctr,
        containerd,
        "run",
        "-t",
        "--rm",
        "--runc-binary",
        PYOCI,
        busybox_image,
        container_id,
        "sh",
        "-c",
        "sleep 1; tty; stty size",
    )
    assert screen_lines(result) == ["/dev/pts/0", "30 100"], result
