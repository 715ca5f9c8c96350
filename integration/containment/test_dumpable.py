"""Attack: reading a joining process's /proc files before it execs (CVE-2019-5736 class).

An attacker in the container (``attackers/procrace.c``) scans /proc in a tight loop while the host runs
200 execs into the container; every process it catches whose ``environ`` it can read without the
container's marker (so: before execve — the shim's environment), whose ``exe`` it can read and is not
busybox (the host's interpreter), or whose ``mem`` it can open, counts. pyoci's children are non-dumpable
from their first instruction to execve: 0 is the only acceptable count. Through containerd (mirrored
with the runc shim) and through the ``pyoci`` CLI.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from integration.containment.attackers import build

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
EXECS = 200
MARK = "EXEC_MARK=1"


def _result(out: Path, timeout: float = 30) -> dict[str, int]:
    (out / "stop").touch()
    done = out / "stop.done"
    deadline = time.monotonic() + timeout
    while not done.exists():
        assert time.monotonic() < deadline, "the racer did not report"
        time.sleep(0.05)
    time.sleep(0.05)
    return {k: int(v) for k, v in (item.split("=") for item in done.read_text().split())}


def _assert_nothing_caught(counts: dict[str, int]) -> None:
    assert counts["seen"] > 0, counts  # the racer did watch
    caught = {k: v for k, v in counts.items() if k != "seen" and v}
    assert not caught, f"the racer opened /proc files of joining processes before they exec'd: {counts}"


@pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])
def test_execs_cannot_be_read_before_they_exec(ctr, busybox_image, runtime, tmp_path):
    racer = build("procrace")
    out = tmp_path / "out"
    out.mkdir()
    cid = f"racer-{uuid.uuid4().hex[:8]}"
    try:
        ctr(
            "run", "-d", "--runtime", runtime, "--env", MARK,
            "--mount", f"type=bind,src={racer},dst=/procrace,options=rbind:ro",
            "--mount", f"type=bind,src={out},dst=/out,options=rbind:rw",
            busybox_image, cid, "/procrace", "/out/stop", MARK,
        )  # fmt: skip
        for i in range(EXECS):
            ctr("task", "exec", "--exec-id", f"x{i}", cid, "/bin/true")
        _assert_nothing_caught(_result(out))
    finally:
        ctr.remove(cid)


def test_cli_execs_cannot_be_read_before_they_exec(bundle, tmp_path):
    racer = build("procrace")
    out = Path(str(bundle.path) + "-out")
    out.mkdir()
    bundle.config["mounts"] += [
        {"destination": "/procrace", "type": "bind", "source": str(racer), "options": ["rbind", "ro"]},
        {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind", "rw"]},
    ]
    bundle.config["process"]["env"].append(MARK)
    bundle.config["process"]["args"] = ["/procrace", "/out/stop", MARK]
    bundle.write()
    bundle.pyoci("run", "-d", "--bundle", str(bundle.path), bundle.id, check=True)
    for _ in range(EXECS):
        bundle.pyoci("exec", "--env", MARK, bundle.id, "/bin/true", check=True)
    _assert_nothing_caught(_result(out))
