"""Where a task's output goes: file:// and binary:// log URIs (ctr run --log-uri), as containerd's
shims handle them; and nothing of the logging binary outlives its task."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
BOTH = pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])

LOGGER = """#!/bin/sh
# a logging binary: stdout on fd 3, stderr on fd 4, ready when fd 5 is closed; argv: out <dir>
dir="$2"
echo "$CONTAINER_ID $CONTAINER_NAMESPACE $$" > "$dir/env"
cat <&3 > "$dir/stdout" 4<&- 5>&- &
cat <&4 > "$dir/stderr" 3<&- 5>&- &
exec 3<&- 4<&- 5>&-   # ready: containerd's shims wait for fd 5 to close
wait
echo done > "$dir/finished"
"""


@pytest.fixture
def logger(tmp_path) -> Path:
    """The logging binary above, as an executable file."""
    path = tmp_path / "logger.sh"
    path.write_text(LOGGER)
    path.chmod(0o755)
    return path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@BOTH
def test_file_log_uri_appends_both_streams(ctr, busybox_image, container_id, runtime, tmp_path):
    log = tmp_path / "logs" / "c.log"
    for _ in range(2):
        result = ctr(
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--log-uri",
            f"file://{log}",
            busybox_image,
            container_id,
            "sh",
            "-c",
            "echo out; echo err >&2",
            check=False,
        )
        assert result.returncode == 0, result.stderr
    if runtime == RUNC:
        # the runc shim's file copy may still be writing when ctr returns, and with --rm it can lose a line for
        # good (seen once in a full run: one "err" of the two never arrived): the mirror checks only what came
        deadline = time.monotonic() + 5
        while len(log.read_text().splitlines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = log.read_text().splitlines()
        assert set(lines) <= {"out", "err"} and lines.count("out") <= 2 and lines.count("err") <= 2, lines
        return
    # pyoci publishes the exit only once the output is in the file: everything is there when ctr returns
    assert sorted(log.read_text().splitlines()) == ["err", "err", "out", "out"]


@BOTH
def test_binary_log_uri_runs_the_logger_with_fds_3_4_5(ctr, busybox_image, container_id, runtime, tmp_path, logger):
    out = tmp_path / "out"
    out.mkdir()
    result = ctr(
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--log-uri",
        f"binary://{logger}?out={out}",
        busybox_image,
        container_id,
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (out / "finished").exists():
        time.sleep(0.05)
    assert (out / "stdout").read_text() == "to-stdout\n"
    assert (out / "stderr").read_text() == "to-stderr\n"
    cid, namespace, pid = (out / "env").read_text().split()
    assert (cid, namespace) == (container_id, ctr.namespace)
    assert not _alive(int(pid)), "the logging binary outlived its task"


def test_no_logger_or_fd_leaks_over_many_runs(ctr, busybox_image, container_id, containerd, tmp_path, logger):
    """Many tasks with binary logging, one after another, through one long-lived (grouped) shim: its fd
    count must not grow and no logging binary may survive its task."""
    anchor = f"{container_id}-anchor"
    annotation = ["--annotation", f"io.containerd.runc.v2.group={container_id}"]
    ctr("run", "-d", "--runtime", PYOCI, *annotation, busybox_image, anchor, "sleep", "1000")
    try:
        shim = int(
            (containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / anchor / "shim.pid").read_text()
        )
        counts = []
        for i in range(50):
            out = tmp_path / f"o{i}"
            out.mkdir()
            ctr(
                "run",
                "--rm",
                "--runtime",
                PYOCI,
                *annotation,
                "--log-uri",
                f"binary://{logger}?out={out}",
                busybox_image,
                f"{container_id}-{i}",
                "echo",
                "hi",
            )
            counts.append(len(os.listdir(f"/proc/{shim}/fd")))
        assert counts[-1] <= counts[2] + 2, f"shim fds grew: {counts}"  # a leak grows by one or more per run
        pids = [int((tmp_path / f"o{i}" / "env").read_text().split()[2]) for i in range(50)]
        time.sleep(0.5)
        assert not [p for p in pids if _alive(p)], "logging binaries outlived their tasks"
    finally:
        ctr.remove(anchor)
