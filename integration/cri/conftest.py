"""Fixtures of the CRI suite: a private containerd with the CRI plugin, CNI and the offline images; pods per test.

One containerd per session (PYOCI_CONTAINERD picks 1.6, 1.7 or 2.1, as for the rest of the integration tests),
its own CNI bridge and subnet, the pause and busybox images imported into the k8s.io namespace. Every scenario
runs with the ``pyoci`` handler and, as the reference, ``runc``. A test marked ``pyoci_bug(reason)`` is an
expected (strict) failure for the pyoci handler only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.conftest import containerd_under_test
from integration.cri import host
from integration.cri.client import CriClient
from integration.cri.config import Network, check_cni_plugins, claim_network, cri_config, write_cni_conf
from integration.cri.images import PAUSE_IMAGE, build_pause_image
from integration.cri.pods import Pods
from integration.harness.containerd import Containerd, mounts_under
from integration.harness.ctr import Ctr
from integration.harness.image import IMAGE_NAME, build_busybox_image
from pyoci.protos import cri_api_pb2 as cri

HANDLERS = ("pyoci", "runc")
CNI_RESULTS = Path("/var/lib/cni/results")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "pyoci_bug(reason, containerd=None): a known pyoci bug; strict xfail for the pyoci handler "
        "(only on these containerd versions, e.g. containerd=('1.6',), when given)",
    )


def pytest_collection_modifyitems(items):
    version = None
    for item in items:
        bug = item.get_closest_marker("pyoci_bug")
        callspec = getattr(item, "callspec", None)
        if not (bug and callspec and callspec.params.get("handler") == "pyoci"):
            continue
        only = bug.kwargs.get("containerd")
        if only is not None:
            version = version or containerd_version(containerd_under_test())
            if f"{version[0]}.{version[1]}" not in only:
                continue
        item.add_marker(pytest.mark.xfail(strict=True, reason=f"pyoci bug: {bug.args[0]}"))


def containerd_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\sv?(\d+)\.(\d+)\.", out)
    if not match:
        raise RuntimeError(f"cannot tell the version of {binary}: {out!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass
class CriNode:
    containerd: Containerd
    network: Network
    major: int
    cgroup_root: str

    @property
    def ipam_dir(self) -> Path:
        return self.containerd.base / "ipam"

    def leaks(self) -> list[str]:
        """What a removed pod may not leave: shims, mounts, netns, veths, IPs, CNI results, container cgroups."""
        found = [f"shim pid {pid}" for pid in self.containerd.shim_pids()]
        found += [f"mount {m}" for m in mounts_under(self.containerd.base)]
        found += [f"netns mount {m}" for m in host.nsfs_mounts_under(str(self.containerd.base))]
        found += [f"veth {p} on {self.network.bridge}" for p in host.bridge_ports(self.network.bridge)]
        ips = self.ipam_dir / self.network.name
        if ips.is_dir():
            found += [f"IP {p.name} still reserved" for p in ips.iterdir() if p.name[0].isdigit()]
        if CNI_RESULTS.is_dir():
            found += [f"CNI result {p}" for p in CNI_RESULTS.iterdir() if p.name.startswith(self.network.name + "-")]
        for top in host.cgroup_dirs(self.cgroup_root):
            found += [f"cgroup {d}" for d in top.glob("*/*") if d.is_dir()]
        return found

    def wait_clean(self, timeout: float = 15) -> list[str]:
        deadline = time.monotonic() + timeout
        while (leaks := self.leaks()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return leaks


async def _wait_ready(address: str, images: list[str], timeout: float = 60) -> None:
    client = CriClient(address, timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while True:
            status = await client.call("Status", cri.StatusRequest())
            ready = {c.type: c.status for c in status.status.conditions}
            present = [
                bool((await client.call("ImageStatus", cri.ImageStatusRequest(image=cri.ImageSpec(image=i)))).image.id)
                for i in images
            ]
            if all(ready.values()) and all(present):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRI not ready: conditions {status.status.conditions}, images {images}: {present}")
            await asyncio.sleep(0.2)
    finally:
        client.close()


@pytest.fixture(scope="session")
def cri_node():
    if os.geteuid() != 0:
        pytest.fail("the CRI suite needs root (it runs a private containerd with CNI networking)")
    check_cni_plugins()
    binary = containerd_under_test()
    major = containerd_version(binary)[0]
    base = Path(tempfile.mkdtemp(prefix="pyoci-cri-", dir=os.environ.get("PYOCI_TMP", "/tmp")))
    network = claim_network()
    write_cni_conf(base / "cni", network, base / "ipam")
    version, extra = cri_config(major, base / "cni", PAUSE_IMAGE)
    daemon = Containerd(base, binary=binary, cri_config=extra, config_version=version)
    node = CriNode(daemon, network, major, f"/pyoci-cri-{network.slot}")
    leftovers: list[str] = []
    try:
        daemon.start(timeout=60)
        ctr = Ctr(daemon.address, "k8s.io", daemon.env())
        ctr("images", "import", str(build_pause_image(base / "pause.tar")))
        ctr("images", "import", str(build_busybox_image(base / "busybox.tar")))
        asyncio.run(_wait_ready(daemon.address, [PAUSE_IMAGE, IMAGE_NAME]))
        yield node
        leftovers = node.leaks()
    finally:
        leftovers += daemon.stop()
        network.release()
        leftovers += host.remove_cgroup_tree(node.cgroup_root)
        if CNI_RESULTS.is_dir():
            for stale in CNI_RESULTS.glob(network.name + "-*"):
                leftovers.append(f"CNI result {stale}")
                stale.unlink()
    if leftovers:
        pytest.fail("the CRI session left these behind:\n  " + "\n  ".join(leftovers))


@pytest.fixture(params=HANDLERS)
def handler(request) -> str:
    return request.param


@pytest.fixture
async def cri_client(cri_node):
    client = CriClient(cri_node.containerd.address)
    yield client
    client.close()


@pytest.fixture
async def pods(request, cri_node, cri_client, handler):
    """The test's pods; afterwards every pod is stopped and removed and nothing of it may be left."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")
    tracker = Pods(cri_client, handler, cri_node.cgroup_root, cri_node.containerd.base / "pods", name)
    yield tracker
    errors = await tracker.teardown()
    leaks = cri_node.wait_clean()
    for pid in cri_node.containerd.shim_pids():  # a leaked shim must not outlive its test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for pod in tracker.pods:
        errors += host.remove_cgroup_tree(pod.cgroup_parent)
    if (errors or leaks) and not request.node.get_closest_marker("xfail"):
        pytest.fail("pod teardown: " + "; ".join(errors + leaks))
