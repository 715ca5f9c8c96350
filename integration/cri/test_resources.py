"""Resources through the CRI: OOMKilled status, stats, live updates, StopContainer's grace period, init exit."""

from __future__ import annotations

import asyncio
import time

from integration.cri import host
from integration.harness.ctr import MEMORY_HOG
from pyoci.protos import cri_api_pb2 as cri

MiB = 1024 * 1024


async def test_oom_killed_container_reports_reason_and_exit_code(pods):
    pod = await pods.run("oom")
    cid = await pod.start(
        "hog", "sh", "-c", MEMORY_HOG, resources=cri.LinuxContainerResources(memory_limit_in_bytes=32 * MiB)
    )
    status = await pod.wait_state(cid, cri.CONTAINER_EXITED, timeout=60)
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), status
    assert status.finished_at >= status.started_at > 0


async def test_exit_code_and_reason_of_a_normal_exit(pods):
    pod = await pods.run("exits")
    ok = await pod.start("ok", "true")
    bad = await pod.start("bad", "sh", "-c", "exit 3")
    assert (await pod.wait_state(ok, cri.CONTAINER_EXITED)).reason == "Completed"
    status = await pod.wait_state(bad, cri.CONTAINER_EXITED)
    assert (status.exit_code, status.reason) == (3, "Error")


async def test_container_stats_and_list_container_stats(pods):
    pod = await pods.run("stats")
    busy = await pod.start("busy", "sh", "-c", "x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done")
    idle = await pod.start("idle", "sleep", "1000")
    await asyncio.sleep(1.5)
    stats = (await pods.client.call("ContainerStats", cri.ContainerStatsRequest(container_id=busy))).stats
    assert stats.attributes.id == busy and stats.attributes.metadata.name == "busy"
    assert stats.cpu.timestamp > 0 and stats.cpu.usage_core_nano_seconds.value > 100_000_000, stats.cpu
    assert stats.memory.working_set_bytes.value > 0 and stats.memory.usage_bytes.value > 0, stats.memory
    request = cri.ListContainerStatsRequest(filter=cri.ContainerStatsFilter(pod_sandbox_id=pod.id))
    listed = (await pods.client.call("ListContainerStats", request)).stats
    assert sorted(s.attributes.id for s in listed) == sorted([busy, idle])
    by_id = {s.attributes.id: s for s in listed}
    assert by_id[idle].cpu.usage_core_nano_seconds.value < by_id[busy].cpu.usage_core_nano_seconds.value


async def test_update_container_resources_reaches_the_cgroup(pods):
    pod = await pods.run("update")
    limits = cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB, cpu_period=100000, cpu_quota=20000)
    cid = await pod.start("a", "sleep", "1000", resources=limits)
    path = f"{pod.cgroup_parent}/{cid}"
    assert int(host.cgroup_file("memory", path, "memory.limit_in_bytes", "memory.max")) == 64 * MiB
    update = cri.LinuxContainerResources(memory_limit_in_bytes=128 * MiB, cpu_period=100000, cpu_quota=50000)
    await pods.client.call(
        "UpdateContainerResources", cri.UpdateContainerResourcesRequest(container_id=cid, linux=update)
    )
    assert int(host.cgroup_file("memory", path, "memory.limit_in_bytes", "memory.max")) == 128 * MiB
    quota = host.cgroup_file("cpu", path, "cpu.cfs_quota_us", "cpu.max")
    assert quota.split()[0] == "50000", quota
    # the new limit holds: 100 MiB fits under 128 MiB (it would not have under 64)
    assert await pod.sh(cid, "head -c 104857600 /dev/zero | tail -c 1 | wc -c") == "1"


async def test_stop_container_sends_sigterm_first(pods):
    pod = await pods.run("stop-term")
    cid = await pod.start("a", "sh", "-c", "trap 'exit 3' TERM; while :; do sleep 1; done")
    await asyncio.sleep(0.5)  # let the shell install its trap
    started = time.monotonic()
    await pods.client.call("StopContainer", cri.StopContainerRequest(container_id=cid, timeout=30))
    assert time.monotonic() - started < 10
    status = (await pod.container_status(cid)).status
    assert (status.state, status.exit_code) == (cri.CONTAINER_EXITED, 3)


async def test_stop_container_kills_after_the_grace_period(pods):
    pod = await pods.run("stop-kill")
    cid = await pod.start("a", "sh", "-c", "trap '' TERM; while :; do sleep 1; done")
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await pods.client.call("StopContainer", cri.StopContainerRequest(container_id=cid, timeout=2))
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 12, elapsed
    status = (await pod.container_status(cid)).status
    assert (status.state, status.exit_code) == (cri.CONTAINER_EXITED, 137)
    assert host.processes_in_cgroup(f"{pod.cgroup_parent}/{cid}") == []


async def test_init_exit_ends_the_containers_other_processes(pods):
    """In the sandbox's pid namespace the container's init is not pid 1: its exit must still end the rest."""
    pod = await pods.run("init-exit")
    cid = await pod.start("a", "sh", "-c", "sleep 1000 & sleep 1; exit 5")
    started = time.monotonic()
    status = await pod.wait_state(cid, cri.CONTAINER_EXITED, timeout=30)
    assert status.exit_code == 5
    assert time.monotonic() - started < 8
    assert host.processes_in_cgroup(f"{pod.cgroup_parent}/{cid}") == []
