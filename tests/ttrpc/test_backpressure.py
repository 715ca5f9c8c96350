"""A peer that floods requests and never reads the answers holds a bounded share of the server."""

import asyncio
import socket
import threading

import psutil
import pytest

from pyoci.protos import containerd_task_v2_pb2 as task
from pyoci.protos import ttrpc_request_pb2
from pyoci.ttrpc.client import Client
from pyoci.ttrpc.codec import Frame, FrameType, encode_frame
from pyoci.ttrpc.server import Server
from pyoci.ttrpc.status import Code, TtrpcError

SERVICE = task.DESCRIPTOR.services_by_name["Task"]
FLOOD = 50_000
IN_FLIGHT = 64
HIGH_WATER = 64 << 10


class SlowTask:
    """Connect answers after a while; Wait answers when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def Connect(self, request, context):
        await asyncio.sleep(0.05)
        return task.ConnectResponse(shim_pid=int(request.id or 0), version="x" * 200)

    async def Wait(self, request, context):
        await self.release.wait()
        return task.WaitResponse(exit_status=int(request.id))


@pytest.fixture
async def served(tmp_path):
    impl = SlowTask()
    server = Server(max_in_flight=IN_FLIGHT, high_water=HIGH_WATER)
    server.register(SERVICE, impl)
    path = str(tmp_path / "s.sock")
    await server.start(path=path)
    yield server, impl, path
    await server.close()


def flood_bytes(count: int) -> bytes:
    payload = task.ConnectRequest(id="1").SerializeToString()
    body = ttrpc_request_pb2.Request(service=SERVICE.full_name, method="Connect", payload=payload).SerializeToString()
    return b"".join(encode_frame(Frame(2 * i + 1, FrameType.REQUEST, body)) for i in range(count))


class Flooder(threading.Thread):
    """Writes the requests from a blocking socket and never reads; counts what the server let in."""

    def __init__(self, path: str, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(0.1)
        self.data = memoryview(data)
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while self.sent < len(self.data) and not self.stop.is_set():
            try:
                self.sent += self.sock.send(self.data[self.sent : self.sent + 65536])
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close()


async def settled(flooder: Flooder, quiet: float = 1.0, limit: float = 30.0) -> int:
    """Wait until the flooder's progress stops (the server no longer reads) or it sent everything."""
    last, still = -1, 0.0
    for _ in range(int(limit / 0.1)):
        await asyncio.sleep(0.1)
        if flooder.sent == len(flooder.data):
            return flooder.sent
        still = still + 0.1 if flooder.sent == last else 0.0
        last = flooder.sent
        if still >= quiet:
            break
    return flooder.sent


async def test_a_flooding_peer_that_never_reads_is_stopped_and_bounded(served):
    server, _, path = served
    data = flood_bytes(FLOOD)
    me = psutil.Process()
    rss_before = me.memory_info().rss
    flooder = Flooder(path, data)
    flooder.start()
    try:
        sent = await settled(flooder)
        requests_let_in = sent * FLOOD // len(data)
        tasks = len(asyncio.all_tasks())
        rss_growth = me.memory_info().rss - rss_before
        # The server stopped reading: most of the 50k requests never left the flooder.
        assert requests_let_in < FLOOD // 2, f"the server read {requests_let_in} of {FLOOD} requests"
        # Calls held for the flooder are capped (the rest were refused, and the refusals are not read either).
        assert tasks <= IN_FLIGHT + 10, f"{tasks} tasks alive"
        assert rss_growth < 20 << 20, f"RSS grew by {rss_growth >> 20} MB"
        # Another connection is served as usual, and at once.
        async with await Client.connect(path) as other:
            reply = await asyncio.wait_for(other.stub(SERVICE).Connect(task.ConnectRequest(id="7")), 2)
        assert reply.shim_pid == 7
    finally:
        flooder.close()
    for _ in range(100):  # the flooder's calls end with its connection
        if server.connections == 0:
            break
        await asyncio.sleep(0.05)
    assert server.connections == 0 and len(asyncio.all_tasks()) <= 2


async def test_requests_beyond_the_in_flight_cap_are_refused_not_queued(served):
    _, impl, path = served
    async with await Client.connect(path) as client:
        stub = client.stub(SERVICE)
        waits = [asyncio.create_task(stub.Wait(task.WaitRequest(id=str(i)))) for i in range(IN_FLIGHT)]
        await asyncio.sleep(0.2)
        with pytest.raises(TtrpcError) as err:
            await asyncio.wait_for(stub.Wait(task.WaitRequest(id="x")), 2)
        assert err.value.code == Code.RESOURCE_EXHAUSTED and "in flight" in err.value.message
        impl.release.set()
        assert [r.exit_status for r in await asyncio.gather(*waits)] == list(range(IN_FLIGHT))
        # capacity is back once the calls are answered
        assert (await stub.Wait(task.WaitRequest(id="5"))).exit_status == 5
