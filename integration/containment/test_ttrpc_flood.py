"""A local peer floods a shim's ttrpc socket with 50k requests and never reads: the shim stays bounded.

The flooder connects to the shim's socket (named by the bundle's ``address`` file) as containerd does,
writes 50 000 State requests without reading a byte, and the shim must stop reading it (its memory grows
by a few MB, not the 130 MB of a server that queues every request and answer) while it goes on answering
containerd on its own connection. The same attack on containerd's runc shim (Go ttrpc) is the mirror:
measured here, it reads ~600 of the requests and stays at 13 MB.
"""

from __future__ import annotations

import socket
import struct
import time

import psutil
import pytest

from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.protos import ttrpc_request_pb2
from pyoci.ttrpc.codec import Frame, FrameType, encode_frame
from tests.ttrpc import test_backpressure as backpressure

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
FLOOD = 50_000
RSS_BOUND = 20 << 20


def flood_bytes(container_id: str, count: int = FLOOD) -> bytes:
    payload = task_pb2.StateRequest(id=container_id).SerializeToString()
    body = ttrpc_request_pb2.Request(service="containerd.task.v2.Task", method="State", payload=payload)
    wire = body.SerializeToString()
    return b"".join(encode_frame(Frame(2 * i + 1, FrameType.REQUEST, wire)) for i in range(count))


class Flooder(backpressure.Flooder):
    """The unit tests' flooder (writes, never reads), waiting the way a real shim needs."""

    def wait_settled(self, quiet: float = 2.0, limit: float = 120.0) -> None:
        """Until everything is sent or nothing more was taken for ``quiet`` seconds."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline and self.sent < len(self.data):
            if self.sent != last:
                last, since = self.sent, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)


def shim_socket_and_pid(containerd, ctr, cid: str) -> tuple[str, int]:
    bundle = containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / cid
    address = (bundle / "address").read_text().strip().removeprefix("unix://")
    return address, shim_pid_of(address)


def shim_pid_of(path: str) -> int:
    """The process holding the unix socket ``path`` (from /proc/net/unix, as ``ss -xp``: no pid file needed)."""
    for proc in psutil.process_iter(["cmdline"]):
        if "containerd-shim" not in " ".join(proc.info["cmdline"] or []):
            continue
        try:
            if any(c.laddr == path for c in proc.net_connections("unix")):
                return proc.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no shim listens on {path}")


@pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])
def test_ttrpc_flood_without_reading_leaves_the_shim_bounded_and_serving(
    ctr, containerd, busybox_image, container_id, runtime
):
    ctr("run", "-d", "--runtime", runtime, busybox_image, container_id, "sleep", "1000")
    try:
        path, pid = shim_socket_and_pid(containerd, ctr, container_id)
        shim = psutil.Process(pid)
        ctr("tasks", "exec", "--exec-id", "warm", container_id, "true")
        rss_before = shim.memory_info().rss
        data = flood_bytes(container_id)
        flooder = Flooder(path, data)
        flooder.start()
        try:
            flooder.wait_settled()
            let_in = flooder.sent * FLOOD // len(data)
            rss_flooded = shim.memory_info().rss
            # containerd is still answered, on its own connection, while the flooder hangs on
            assert container_id in ctr("tasks", "list").stdout
            result = ctr("tasks", "exec", "--exec-id", "after", container_id, "echo", "still here", timeout=30)
            assert result.stdout.strip() == "still here"
        finally:
            flooder.close()
        growth = rss_flooded - rss_before
        report = f"shim RSS {rss_before >> 20} -> {rss_flooded >> 20} MB, {let_in} of {FLOOD} requests read"
        print(report)
        assert let_in < FLOOD // 2, f"the shim read the whole flood: {report}"
        assert growth < RSS_BOUND, report
        assert shim.is_running()
    finally:
        ctr.remove(container_id)


@pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])
@pytest.mark.parametrize(
    "frame",
    [struct.pack(">IIBB", 10, 1, 77, 0) + b"\0" * 10, struct.pack(">IIBB", 64 << 20, 1, 1, 0) + b"\0" * 4096],
    ids=["garbage", "oversized"],
)
def test_ttrpc_garbage_and_oversized_frames_close_only_that_connection(
    ctr, containerd, busybox_image, container_id, runtime, frame
):
    ctr("run", "-d", "--runtime", runtime, busybox_image, container_id, "sleep", "1000")
    try:
        path, pid = shim_socket_and_pid(containerd, ctr, container_id)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
            bad.connect(path)
            bad.settimeout(10)
            bad.sendall(frame)
            if runtime == PYOCI:  # (Go ttrpc skips an unknown type, and answers an oversized frame's stream)
                assert bad.recv(4096) == b"", "the shim kept a connection that broke the framing"
            result = ctr("tasks", "exec", "--exec-id", "after", container_id, "echo", "still here", timeout=30)
            assert result.stdout.strip() == "still here"
        assert psutil.pid_exists(pid)
    finally:
        ctr.remove(container_id)
