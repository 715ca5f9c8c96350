"""The harness itself: containerd answers, the offline image is reproducible, and the runc shim runs it.

The runc-shim run is the baseline every pyoci scenario mirrors.
"""

import hashlib

from integration.harness.image import build_busybox_image


async def test_private_containerd_answers_over_grpc(grpc_client, containerd):
    version = await grpc_client.version()
    assert version.version
    assert containerd.address.startswith("/tmp/pyoci-it-")


def test_busybox_image_is_reproducible(tmp_path):
    a = build_busybox_image(tmp_path / "a.tar")
    b = build_busybox_image(tmp_path / "b.tar")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_runc_shim_runs_busybox(ctr, busybox_image, container_id):
    result = ctr("run", "--rm", "--runtime", "io.containerd.runc.v2", busybox_image, container_id, "echo", "hello")
    assert result.stdout == "hello\n"
    assert container_id not in ctr("containers", "list", "--quiet").stdout
