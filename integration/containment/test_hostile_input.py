"""Attacks: hostile input to the runtime. Each gets one clear line naming the field, in bounded time, and
leaves nothing behind (state dir, cgroup, mount, process) — including a create killed half-way, which
``delete --force`` must then remove completely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from integration.harness.bundle import PYOCI


def _one_line_error(result, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_config_nested_a_hundred_thousand_deep(bundle):
    depth = 100_000
    text = json.dumps(bundle.config)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    (bundle.path / "config.json").write_text(text)
    started = time.monotonic()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    _one_line_error(result, "config.json")
    assert time.monotonic() - started < 45
    assert not bundle.leftovers()


def test_a_fifty_megabyte_annotation_is_carried_whole(bundle):
    big = "a" * (50 << 20)
    bundle.config["annotations"] = {"big": big}
    bundle.write()
    started = time.monotonic()
    bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id, timeout=120, check=True)
    state = json.loads(bundle.pyoci("state", bundle.id, timeout=60, check=True).stdout)
    assert state["status"] == "created" and state["annotations"]["big"] == big
    bundle.pyoci("delete", "--force", bundle.id, timeout=60, check=True)
    assert time.monotonic() - started < 120


@pytest.mark.parametrize(
    "container_id, needle",
    [("x" * 300, "at most 255"), ("abc\n", "invalid container id"), ("../../etc", "invalid container id")],
    ids=["too-long", "trailing-newline", "path"],
)
def test_bad_container_ids(bundle, container_id, needle):
    result = bundle.pyoci("create", "--bundle", str(bundle.path), container_id)
    _one_line_error(result, "id", needle)
    assert not list(bundle.root.glob("*")) if bundle.root.exists() else True


def test_device_numbers_past_the_kernel_range(bundle):
    bundle.config["linux"]["devices"] = [{"path": "/dev/big", "type": "c", "major": 2**40, "minor": 1}]
    bundle.write()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    _one_line_error(result, "linux.devices[0].major")
    assert not bundle.leftovers()


def test_a_hundred_thousand_seccomp_rules(bundle):
    rules = [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": i, "op": "SCMP_CMP_EQ"}]}
        for i in range(100_000)
    ]
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    bundle.write()
    started = time.monotonic()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id, timeout=60)
    _one_line_error(result, "linux.seccomp.syscalls", "more than 8192 rules")
    assert time.monotonic() - started < 45
    assert not bundle.leftovers()


def test_a_create_killed_half_way_is_deleted_completely(bundle, tmp_path):
    marker = tmp_path / "hook.pid"
    bundle.config["hooks"] = {
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"echo $$ > {marker}; exec sleep 600"]}]
    }
    bundle.config["process"]["args"] = ["sleep", "600"]
    bundle.write()
    create = subprocess.Popen(
        [PYOCI, "--root", str(bundle.root), "create", "--bundle", str(bundle.path), bundle.id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hook_pid = 0
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text().strip()):
            assert time.monotonic() < deadline and create.poll() is None, "the createRuntime hook never ran"
            time.sleep(0.02)
        hook_pid = int(marker.read_text())
        create.send_signal(signal.SIGKILL)  # half-way: cgroup made, init forked, hooks running
        create.wait()
    finally:
        if create.poll() is None:
            create.kill()
            create.wait()
        if hook_pid:
            os.kill(hook_pid, signal.SIGKILL)
    assert bundle.leftovers(), "nothing was half-made: the test did not kill create half-way"
    bundle.pyoci("delete", "--force", bundle.id, check=True)
    assert not bundle.leftovers()
    # and the id is free again
    bundle.config["hooks"] = {}
    bundle.write()
    bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id, check=True)
    bundle.pyoci("delete", "--force", bundle.id, check=True)
