"""A pod's life through the CRI: two containers sharing the sandbox's namespaces, one shim, the pod IP, cleanup."""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.request

from integration.cri import host
from integration.cri.pods import CONTAINER
from pyoci.protos import cri_api_pb2 as cri

NAMESPACES = ("net", "ipc", "uts", "pid")
READ_NS = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done"


async def test_two_containers_share_the_sandbox_namespaces(pods, cri_node):
    pod = await pods.run("shared", hostname="shared-host")
    a = await pod.start("a", "sh", "-c", "echo hello from a; exec sleep 1000")
    b = await pod.start("b", "sleep", "1000")
    pause = await pod.pid()
    expected = [host.ns_id(pause, n) for n in NAMESPACES]
    assert (await pod.sh(a, READ_NS)).split() == expected
    assert (await pod.sh(b, READ_NS)).split() == expected
    assert expected[0] != host.ns_id("self", "net")
    # the sandbox's pid namespace: pause is pid 1 and both containers see each other
    assert await pod.sh(a, "tr '\\0' ' ' < /proc/1/cmdline") == "/pause"
    assert "sleep 1000" in await pod.sh(b, "ps -o args")
    assert await pod.sh(b, "hostname") == "shared-host"
    await pod.sh(a, "echo shm-from-a > /dev/shm/note")
    assert await pod.sh(b, "cat /dev/shm/note") == "shm-from-a"
    assert "stdout F hello from a" in pod.log("a")
    for cid in (a, b):
        status = (await pod.container_status(cid)).status
        assert status.state == cri.CONTAINER_RUNNING and status.metadata.name in ("a", "b")


async def test_container_pid_namespace_of_its_own(pods):
    pod = await pods.run("ownpid")
    a = await pod.start("a", "sleep", "1000", security=_pid_mode(CONTAINER))
    assert await pod.sh(a, "tr '\\0' ' ' < /proc/1/cmdline") == "sleep 1000"
    assert (await pod.sh(a, "readlink /proc/self/ns/pid")) != host.ns_id(await pod.pid(), "pid")
    assert (await pod.sh(a, "readlink /proc/self/ns/net")) == host.ns_id(await pod.pid(), "net")


def _pid_mode(mode: int) -> cri.LinuxContainerSecurityContext:
    return cri.LinuxContainerSecurityContext(namespace_options=cri.NamespaceOption(pid=mode))


async def test_one_shim_per_pod_and_it_exits_with_the_pod(pods, cri_node):
    pod = await pods.run("oneshim")
    a = await pod.start("a", "sleep", "1000")
    b = await pod.start("b", "sleep", "1000")
    shims = cri_node.containerd.shim_pids()
    assert len(shims) == 1, shims
    for pid in (await pod.pid(), await pod.container_pid(a), await pod.container_pid(b)):
        assert shims[0] in host.ancestors(pid), (pid, host.ancestors(pid), shims)
    await pods.remove(pod)
    assert cri_node.wait_clean() == []
    assert not host.alive(shims[0])


async def test_pod_removal_leaves_nothing_behind(pods, cri_node):
    pod = await pods.run("leaks")
    cid = await pod.start("a", "sleep", "1000")
    veths = host.bridge_ports(cri_node.network.bridge)
    assert len(veths) == 1, veths
    assert host.cgroup_dirs(f"{pod.cgroup_parent}/{cid}"), "no container cgroup while running"
    netns = [m for m in host.nsfs_mounts_under(str(cri_node.containerd.base)) if "cni-" in m]
    assert len(netns) == 1, netns
    await pods.remove(pod)
    assert cri_node.wait_clean() == []
    assert not host.cgroup_dirs(f"{pod.cgroup_parent}/{cid}")
    assert not host.cgroup_dirs(f"{pod.cgroup_parent}/{pod.id}")
    listed = await pods.client.call("ListPodSandbox", cri.ListPodSandboxRequest())
    assert pod.id not in [p.id for p in listed.items]
    # idempotent, as the kubelet expects
    await pods.remove(pod)


async def test_pod_ip_is_reachable_from_the_host(pods, cri_node):
    pod = await pods.run("web")
    await pod.start(
        "web", "sh", "-c", "mkdir /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www"
    )
    ip = await pod.ip()
    assert ipaddress.IPv4Address(ip) in cri_node.network.subnet, ip

    def fetch() -> str:
        with urllib.request.urlopen(f"http://{ip}:8080/index.html", timeout=5) as response:
            return response.read().decode().strip()

    for _ in range(50):
        try:
            body = await asyncio.to_thread(fetch)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        body = await asyncio.to_thread(fetch)
    assert body == "hello-from-pod"
