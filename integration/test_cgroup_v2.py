"""cgroup v2 behaviour, through containerd and the pyoci shim, on a pure cgroup v2 host.

This machine is hybrid, so here these tests skip; ``./dev test`` runs them in the QEMU guest
(``integration/vm/guest.py``, cgroup_no_v1=all), where they are the real thing: OOM kills seen through
memory.events, pause through cgroup.freeze, v2 metrics, live updates of memory.max / cpu.max /
pids.max, ``kill --all`` through cgroup.kill, and the cgroup gone after delete.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from integration.harness.ctr import assert_oom_then_exit
from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.runtime.cgroups import detect_layout
from pyoci.ttrpc.client import Client

PYOCI = "io.containerd.pyoci.v2"
pytestmark = pytest.mark.skipif(detect_layout().mode != "unified", reason="needs a pure cgroup v2 host (the guest)")
CGROUP = Path("/sys/fs/cgroup")


def cgroup_of(ctr, cid: str) -> Path:
    return CGROUP / ctr.namespace / cid


@pytest.fixture
def running(ctr, busybox_image, container_id):
    ctr("run", "-d", "--runtime", PYOCI, busybox_image, container_id, "sh", "-c", "sleep 1000 & sleep 1000 & wait")
    ctr.wait_task_status(container_id, "RUNNING", timeout=120)
    return container_id


def test_oom_kill_through_memory_events(ctr, busybox_image, container_id):
    assert_oom_then_exit(ctr, busybox_image, container_id, PYOCI, "--memory-limit", "20000000", timeout=300)


def test_pause_resume_through_cgroup_freeze(ctr, running):
    cg = cgroup_of(ctr, running)
    ctr("tasks", "pause", running, timeout=120)
    assert (cg / "cgroup.freeze").read_text().strip() == "1"
    assert "frozen 1" in (cg / "cgroup.events").read_text()
    ctr("tasks", "resume", running, timeout=120)
    assert "frozen 0" in (cg / "cgroup.events").read_text()


def test_stats_are_v2_metrics(ctr, running):
    metrics = json.loads(ctr("tasks", "metrics", "--format", "json", running, timeout=120).stdout)
    assert metrics["pids"]["current"] == 3
    assert metrics["memory"]["usage"] > 0 and metrics["cpu"]["usage_usec"] > 0


async def _update(address: str, cid: str, resources: dict) -> None:
    value = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps(resources).encode(),
    )
    async with await Client.connect(address) as client:
        stub = client.stub(task_pb2.DESCRIPTOR.services_by_name["Task"])
        await stub.Update(task_pb2.UpdateTaskRequest(id=cid, resources=value), timeout=60)


def test_update_writes_memory_cpu_and_pids_max(ctr, containerd, running):
    address = (containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / running / "address").read_text()
    asyncio.run(
        _update(
            address,
            running,
            {"memory": {"limit": 50331648}, "pids": {"limit": 9}, "cpu": {"quota": 20000, "period": 100000}},
        )
    )
    cg = cgroup_of(ctr, running)
    assert (cg / "memory.max").read_text().strip() == "50331648"
    assert (cg / "pids.max").read_text().strip() == "9"
    assert (cg / "cpu.max").read_text().strip() == "20000 100000"


def test_kill_all_and_the_cgroup_goes_with_delete(ctr, running):
    cg = cgroup_of(ctr, running)
    assert len((cg / "cgroup.procs").read_text().split()) == 3
    ctr("tasks", "kill", "--all", "--signal", "SIGKILL", running, timeout=120)
    ctr.wait_task_status(running, "STOPPED", timeout=120)
    ctr("tasks", "delete", running, timeout=120)
    assert not cg.exists()


def test_device_rules_are_enforced_by_the_ebpf_program(ctr, busybox_image, container_id):
    result = ctr(
        "run",
        "--rm",
        "--runtime",
        PYOCI,
        busybox_image,
        container_id,
        "sh",
        "-c",
        "mknod /tmp/kmsg c 1 11 && head -c 1 /tmp/kmsg; echo rc=$?; head -c 1 /dev/zero | wc -c",
        check=False,
        timeout=300,
    )
    assert "Operation not permitted" in result.stderr and "rc=1" in result.stdout, result
    assert result.stdout.strip().endswith("1")  # /dev/zero, a default device, still works


def test_oom_under_a_pod_level_limit_is_still_reported(ctr, busybox_image, container_id):
    """The limit is on the parent (a pod's cgroup): the container's memory.events counts the kill in
    oom_kill but not in oom (containerd#6323) — a watcher reading ``oom`` would miss it."""
    pod = CGROUP / f"pyoci-pod-{container_id}"
    pod.mkdir()
    try:
        (pod / "cgroup.subtree_control").write_text("+memory +pids")
        (pod / "memory.max").write_text("20000000")
        assert_oom_then_exit(
            ctr, busybox_image, container_id, PYOCI, "--cgroup", f"/{pod.name}/{container_id}", timeout=300
        )
    finally:
        for child in pod.iterdir() if pod.exists() else []:
            if child.is_dir():
                child.rmdir()
        pod.rmdir()
