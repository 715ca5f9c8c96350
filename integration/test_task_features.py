"""Stats and live updates of a running task: ``ctr t metrics`` against the runc shim's figures for the
same workload, and the Update RPC (called here with our own ttrpc client on the shim's socket, as
containerd does; ctr 1.6 has no "tasks update") changing limits the kernel then enforces."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.ttrpc.client import Client

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
TASK = task_pb2.DESCRIPTOR.services_by_name["Task"]


def shim_address(containerd, ctr, cid: str) -> str:
    return (containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / cid / "address").read_text()


def metrics(ctr, cid: str) -> dict:
    return json.loads(ctr("tasks", "metrics", "--format", "json", cid).stdout)


@pytest.fixture
def two_tasks(ctr, busybox_image, container_id):
    ids = {PYOCI: container_id + "-p", RUNC: container_id + "-r"}
    for runtime, cid in ids.items():
        ctr(
            "run",
            "-d",
            "--runtime",
            runtime,
            "--memory-limit",
            "67108864",
            busybox_image,
            cid,
            "sh",
            "-c",
            "sleep 1000 & sleep 1000 & wait",
        )
        ctr.wait_task_status(cid, "RUNNING")
    yield ids
    ctr.remove(*ids.values())


# Page-cache counters: file pages are charged to the cgroup that first read the file (busybox, shared by both
# containers), so which of the two shows them non-zero (and so present in the JSON) depends on the order.
FILE_PAGES = {
    f"{prefix}{name}"
    for prefix in ("", "total_")
    for name in ("cache", "mapped_file", "active_file", "inactive_file", "pg_maj_fault", "dirty", "writeback")
}


def test_metrics_match_the_runc_shims(ctr, two_tasks):
    ours, theirs = metrics(ctr, two_tasks[PYOCI]), metrics(ctr, two_tasks[RUNC])
    # the same message type, the same fields filled
    assert set(ours) == set(theirs)
    assert ours["memory"]["usage"]["limit"] == theirs["memory"]["usage"]["limit"] == 67108864
    assert ours["pids"]["current"] == theirs["pids"]["current"] == 3
    assert ours["cpu"]["usage"]["total"] > 0 and ours["memory"]["usage"]["usage"] > 0
    for section in ("memory", "cpu", "pids"):
        assert set(ours[section]) - FILE_PAGES == set(theirs[section]) - FILE_PAGES, section
    # usage is within noise of the reference (same workload: three sleeping busybox processes)
    a, b = ours["memory"]["usage"]["usage"], theirs["memory"]["usage"]["usage"]
    assert 0.5 < a / b < 2.0, (a, b)


def test_ps_lists_exec_ids_like_the_runc_shim(ctr, two_tasks):
    for cid in two_tasks.values():
        ctr("tasks", "exec", "-d", "--exec-id", "side", cid, "sleep", "100")
    outputs = {rt: ctr("tasks", "ps", cid).stdout.splitlines() for rt, cid in two_tasks.items()}
    for lines in outputs.values():
        assert lines[0].split() == ["PID", "INFO"]
        assert len(lines) == 5 and sum("side" in line for line in lines) == 1


async def update(address: str, cid: str, resources: dict) -> None:
    value = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps(resources).encode(),
    )
    async with await Client.connect(address) as client:
        await client.stub(TASK).Update(task_pb2.UpdateTaskRequest(id=cid, resources=value), timeout=10)


def test_update_changes_limits_the_kernel_enforces(ctr, containerd, busybox_image, container_id):
    ctr("run", "-d", "--runtime", PYOCI, busybox_image, container_id, "sleep", "1000")
    ctr.wait_task_status(container_id, "RUNNING")
    cgroup = f"{ctr.namespace}/{container_id}"
    address = shim_address(containerd, ctr, container_id)
    asyncio.run(
        update(
            address,
            container_id,
            {
                "pids": {"limit": 4},
                "memory": {"limit": 33554432},
                "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            },
        )
    )
    assert Path(f"/sys/fs/cgroup/pids/{cgroup}/pids.max").read_text().strip() == "4"
    assert Path(f"/sys/fs/cgroup/memory/{cgroup}/memory.limit_in_bytes").read_text().strip() == "33554432"
    assert Path(f"/sys/fs/cgroup/cpu/{cgroup}/cpu.shares").read_text().strip() == "512"
    assert Path(f"/sys/fs/cgroup/cpu/{cgroup}/cpu.cfs_quota_us").read_text().strip() == "50000"
    # behaviour: with 4 pids (sleep + sh + 2 children) the next fork fails
    result = ctr(
        "tasks",
        "exec",
        "--exec-id",
        "forks",
        container_id,
        "sh",
        "-c",
        "sleep 100 & sleep 100 & sleep 100 & sleep 100 & echo spawned",
        check=False,
    )
    assert "fork" in (result.stdout + result.stderr).lower() or result.returncode != 0, result
    bad = ctr("tasks", "list")  # the task survives a refused fork
    assert container_id in bad.stdout
