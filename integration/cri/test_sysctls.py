"""Sandbox sysctls through the CRI: safe and unsafe namespaced ones apply to the pod; others are refused."""

from __future__ import annotations

import pytest
from grpclib.exceptions import GRPCError

from integration.cri.pods import NODE

SAFE = {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_local_port_range": "40000\t50000", "net.ipv4.tcp_syncookies": "0"}
UNSAFE = {"net.core.somaxconn": "1234", "kernel.msgmax": "65000", "net.ipv4.tcp_keepalive_time": "600"}


def _proc_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


@pytest.mark.parametrize("sysctls", [SAFE, UNSAFE], ids=["safe", "unsafe"])
async def test_sandbox_sysctls_reach_the_pods_containers(pods, sysctls):
    pod = await pods.run("sysctls", sysctls=sysctls)
    cid = await pod.start("a", "sleep", "1000")
    for name, value in sysctls.items():
        assert await pod.sh(cid, f"cat {_proc_path(name)}") == value, name
    assert _host_value("net.core.somaxconn") != "1234"  # the host's own value is untouched


def _host_value(name: str) -> str:
    with open(_proc_path(name)) as f:
        return f.read().strip()


async def _assert_refused(pods, name: str, **pod_options) -> None:
    """The pod must fail to start. It asks for the host's current value: a runtime that wrongly applies it to the
    host changes nothing (the test still fails), and the host's value is checked afterwards all the same."""
    before = _host_value(name)
    try:
        with pytest.raises(GRPCError) as failure:
            await pods.run(name.replace(".", "-"), sysctls={name: before}, **pod_options)
        assert name in failure.value.message, failure.value.message
    finally:
        assert _host_value(name) == before


async def test_a_sysctl_outside_the_pods_namespaces_is_refused(pods):
    await _assert_refused(pods, "vm.swappiness")


async def test_a_net_sysctl_in_the_host_network_is_refused(pods):
    await _assert_refused(pods, "net.core.somaxconn", network=NODE)
