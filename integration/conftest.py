"""Fixtures: a private containerd (one per test session), the offline busybox image, ctr, a gRPC client.

Integration tests need root (containerd, mounts, cgroups). They are not skipped when something is
missing: a harness that cannot start is a failure, not a pass.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from integration.harness.bundle import make_bundle
from integration.harness.containerd import Containerd
from integration.harness.ctr import Ctr
from integration.harness.grpc import ContainerdClient
from integration.harness.image import IMAGE_NAME, build_busybox_image
from integration.harness.versions import containerd_binary

NAMESPACE = "pyoci-test"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


def containerd_under_test() -> str:
    """PYOCI_CONTAINERD: a version of the matrix (1.6, 1.7, 2.1) or a path to a containerd binary."""
    choice = os.environ.get("PYOCI_CONTAINERD", "1.6")
    return choice if "/" in choice else containerd_binary(choice)


@pytest.fixture(scope="session")
def containerd():
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (they run a private containerd)")
    base = Path(tempfile.mkdtemp(prefix="pyoci-it-", dir=os.environ.get("PYOCI_TMP", "/tmp")))
    daemon = Containerd(base, binary=containerd_under_test())
    daemon.start()
    yield daemon
    leftovers = daemon.stop()
    if leftovers:
        pytest.fail("the test session left these behind:\n  " + "\n  ".join(leftovers))


@pytest.fixture
def ctr(containerd) -> Ctr:
    return Ctr(containerd.address, NAMESPACE, containerd.env())


@pytest.fixture(scope="session")
def busybox_image(containerd) -> str:
    tar = build_busybox_image(containerd.base / "busybox.tar")
    Ctr(containerd.address, NAMESPACE, containerd.env())("images", "import", str(tar))
    return IMAGE_NAME


@pytest.fixture
async def grpc_client(containerd):
    client = ContainerdClient(containerd.address, NAMESPACE)
    yield client
    client.close()


@pytest.fixture
def busy_cpus():
    """Every core kept busy for the test (races hide on an idle machine): one spinning process per core,
    started here and ended by pid here."""
    hogs = [
        subprocess.Popen(["sh", "-c", "while :; do :; done"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield [h.pid for h in hogs]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.fixture
def bundle(request):
    """A bundle of the busybox rootfs for the ``pyoci`` CLI; afterwards its container is deleted and the test
    fails if any state dir, cgroup or mount of it is left."""
    # Not under pytest's 0700 tmp dir: a user-namespaced container root must be able to reach its rootfs.
    base = tempfile.mkdtemp(prefix="pyoci-bundle-", dir="/tmp")
    os.chmod(base, 0o755)
    cid = request.node.name.replace("[", "-").replace("]", "")[:50]
    b = make_bundle(Path(base) / "bundle", cid, ["true"])
    yield b
    b.pyoci("delete", "--force", b.id)
    leftovers = b.leftovers()
    shutil.rmtree(base, ignore_errors=True)
    assert not leftovers, f"left behind: {leftovers}"


@pytest.fixture
def container_id(request, ctr):
    """A container id unique to the test; whatever the test leaves of it is removed afterwards."""
    cid = re.sub(r"[^a-zA-Z0-9_.-]", "-", request.node.name)[:60].strip("-.")
    yield cid
    with contextlib.suppress(AssertionError):
        ctr.remove(cid)
