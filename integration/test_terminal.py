"""Terminals: ``ctr run -t`` and ``ctr task exec -t``, run under ``script`` (which gives ctr a pty).

Inside, ``tty`` names the container's own /dev/pts/N, and ``stty size`` follows ResizePty (ctr sends
its terminal's size right after Start, hence the short sleep). Mirrored with the runc shim.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
BOTH = pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])


def under_a_terminal(ctr, containerd, *args: str, rows: int = 30, cols: int = 100) -> subprocess.CompletedProcess:
    command = " ".join(shlex.quote(a) for a in ctr.argv(*args))
    runner = subprocess.Popen(
        ["script", "-qec", f"stty rows {rows} cols {cols}; {command}", "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=containerd.env(),
    )
    try:
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    return subprocess.CompletedProcess(args, runner.returncode, out.replace("\r", ""), err)


def screen_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The non-empty lines the terminal showed (without the NULs it echoes, raw or as ^@)."""
    return [line for line in result.stdout.replace("\x00", "").replace("^@", "").splitlines() if line.strip()]


@BOTH
def test_run_with_a_terminal(ctr, containerd, busybox_image, container_id, runtime):
    result = under_a_terminal(
        ctr,
        containerd,
        "run",
        "-t",
        "--rm",
        "--runtime",
        runtime,
        busybox_image,
        container_id,
        "sh",
        "-c",
        "sleep 1; tty; stty size; exit 7",
    )
    lines = screen_lines(result)
    assert lines == ["/dev/pts/0", "30 100"], result
    assert result.returncode == 7


@BOTH
def test_exec_with_a_terminal(ctr, containerd, busybox_image, container_id, runtime):
    ctr("run", "-d", "--runtime", runtime, busybox_image, container_id, "sleep", "1000")
    ctr.wait_task_status(container_id, "RUNNING")
    result = under_a_terminal(
        ctr,
        containerd,
        "tasks",
        "exec",
        "-t",
        "--exec-id",
        "t1",
        container_id,
        "sh",
        "-c",
        "sleep 1; tty; stty size",
        rows=12,
        cols=34,
    )
    lines = screen_lines(result)
    assert lines[0].startswith("/dev/pts/") and lines[1:] == ["12 34"], result


def test_fifty_terminal_execs_leave_no_fd_in_the_shim(ctr, containerd, busybox_image, container_id):
    ctr("run", "-d", "--runtime", PYOCI, busybox_image, container_id, "sleep", "1000")
    ctr.wait_task_status(container_id, "RUNNING")
    bundle = containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / container_id
    shim = int((bundle / "shim.pid").read_text())
    counts = []
    for i in range(50):
        result = under_a_terminal(
            ctr, containerd, "tasks", "exec", "-t", "--exec-id", f"x{i}", container_id, "echo", "hi"
        )
        assert "hi" in result.stdout, result
        counts.append(len(os.listdir(f"/proc/{shim}/fd")))
    assert counts[-1] <= counts[4] + 2, f"shim fds grew: {counts}"  # a leak grows by one or more per run
