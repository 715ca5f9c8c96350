"""hostNetwork, hostPID and hostIPC, true and false: the containers' namespaces are the host's or the pod's own."""

from __future__ import annotations

import pytest

from integration.cri import host
from integration.cri.pods import NODE, POD

KINDS = {"network": "net", "pid": "pid", "ipc": "ipc"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("on_host", [True, False], ids=["host", "pod"])
async def test_host_namespace_options(pods, cri_node, kind, on_host):
    mode = NODE if on_host else POD
    pod = await pods.run(f"host-{kind}", **{kind: mode})
    cid = await pod.start("a", "sleep", "1000")
    ns = KINDS[kind]
    inside = await pod.sh(cid, f"readlink /proc/self/ns/{ns}")
    assert inside == host.ns_id(await pod.pid(), ns)
    assert (inside == host.ns_id("self", ns)) is on_host, (inside, host.ns_id("self", ns))
    if kind == "network":
        assert bool(await pod.ip()) is not on_host
        assert len(host.bridge_ports(cri_node.network.bridge)) == (0 if on_host else 1)
    if kind == "pid":
        first = await pod.sh(cid, "tr '\\0' ' ' < /proc/1/cmdline")
        assert (first == "/pause") is not on_host, first
