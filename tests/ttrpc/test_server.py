"""The asyncio ttrpc server and client against each other over a real unix socket."""

import asyncio
import random
import socket
import struct

import pytest

from pyoci.protos import containerd_task_v2_pb2 as task
from pyoci.protos import ttrpc_request_pb2
from pyoci.ttrpc.client import Client
from pyoci.ttrpc.codec import Frame, FrameDecoder, FrameType, encode_frame
from pyoci.ttrpc.server import Server
from pyoci.ttrpc.status import Code, TtrpcError

SERVICE = task.DESCRIPTOR.services_by_name["Task"]


class FakeTask:
    """Enough of a Task service to exercise the transport (no containers involved)."""

    def __init__(self):
        self.wait_cancelled = asyncio.Event()
        self.wait_started = asyncio.Event()

    async def Connect(self, request, context):
        await asyncio.sleep(random.random() / 100)  # let responses overtake each other
        return task.ConnectResponse(shim_pid=int(request.id), version=context.get("ns", ""))

    async def State(self, request, context):
        raise TtrpcError(Code.NOT_FOUND, f"container {request.id}: not found")

    async def Pids(self, request, context):
        raise RuntimeError("boom")

    async def Wait(self, request, context):
        self.wait_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise


@pytest.fixture
async def served(tmp_path):
    impl = FakeTask()
    server = Server()
    server.register(SERVICE, impl)
    path = str(tmp_path / "s.sock")
    await server.start(path=path)
    yield server, impl, path
    await server.close()


async def raw_call(path, stream_id, payload, timeout_nano=0):
    """Send one hand-made Request frame and return the decoded Response (no client library)."""
    reader, writer = await asyncio.open_unix_connection(path)
    request = ttrpc_request_pb2.Request(
        service=SERVICE.full_name, method="Wait", payload=payload, timeout_nano=timeout_nano
    )
    writer.write(encode_frame(Frame(stream_id, FrameType.REQUEST, request.SerializeToString())))
    decoder = FrameDecoder()
    frames = []
    while not frames:
        data = await reader.read(4096)
        assert data, "server closed the connection"
        frames = decoder.feed(data)
    writer.close()
    response = ttrpc_request_pb2.Response()
    response.ParseFromString(frames[0].payload)
    assert frames[0].stream_id == stream_id and frames[0].type == FrameType.RESPONSE
    return response


async def test_round_trip_with_metadata(served):
    _, _, path = served
    async with await Client.connect(path) as client:
        stub = client.stub(SERVICE)
        reply = await stub.Connect(task.ConnectRequest(id="42"), metadata={"ns": "k8s.io"})
    assert reply.shim_pid == 42 and reply.version == "k8s.io"


async def test_hundred_concurrent_calls_on_one_connection_are_matched_by_stream(served):
    _, _, path = served
    async with await Client.connect(path) as client:
        stub = client.stub(SERVICE)
        replies = await asyncio.gather(*(stub.Connect(task.ConnectRequest(id=str(i))) for i in range(100)))
    assert [r.shim_pid for r in replies] == list(range(100))


async def test_handler_errors_are_statuses(served):
    _, _, path = served
    async with await Client.connect(path) as client:
        stub = client.stub(SERVICE)
        with pytest.raises(TtrpcError) as err:
            await stub.State(task.StateRequest(id="c1"))
        assert err.value.code == Code.NOT_FOUND and "container c1" in err.value.message
        with pytest.raises(TtrpcError) as err:
            await stub.Pids(task.PidsRequest(id="c1"))
        assert err.value.code == Code.UNKNOWN and "boom" in err.value.message


async def test_unknown_service_and_method_are_unimplemented(served):
    _, _, path = served
    async with await Client.connect(path) as client:
        with pytest.raises(TtrpcError) as err:
            await client.call("no.such.Service", "X", task.StateRequest(), task.StateResponse)
        assert err.value.code == Code.UNIMPLEMENTED and "service no.such.Service" in err.value.message
        with pytest.raises(TtrpcError) as err:
            await client.call(SERVICE.full_name, "Explode", task.StateRequest(), task.StateResponse)
        assert err.value.code == Code.UNIMPLEMENTED and "method Explode" in err.value.message
        # An RPC of the descriptor that the implementation lacks is Unimplemented too.
        with pytest.raises(TtrpcError) as err:
            await client.stub(SERVICE).Stats(task.StatsRequest(id="c1"))
        assert err.value.code == Code.UNIMPLEMENTED


async def test_server_side_timeout_answers_deadline_exceeded(served):
    _, impl, path = served
    response = await raw_call(path, 1, task.WaitRequest(id="c").SerializeToString(), timeout_nano=50_000_000)
    assert response.status.code == Code.DEADLINE_EXCEEDED
    assert impl.wait_cancelled.is_set()


async def test_client_side_timeout(served):
    _, _, path = served
    async with await Client.connect(path) as client:
        with pytest.raises(TtrpcError) as err:
            await client.stub(SERVICE).Wait(task.WaitRequest(id="c"), timeout=0.05)
    assert err.value.code == Code.DEADLINE_EXCEEDED


async def test_even_stream_id_and_bad_payload_are_invalid_argument(served):
    _, _, path = served
    assert (await raw_call(path, 2, b"")).status.code == Code.INVALID_ARGUMENT
    response = await raw_call(path, 1, b"\xff\xff\xff")
    assert response.status.code == Code.INVALID_ARGUMENT and "Wait" in response.status.message


@pytest.mark.parametrize(
    "header",
    [struct.pack(">IIBB", 10, 1, 77, 0), struct.pack(">IIBB", 5 << 20, 1, 1, 0)],
    ids=["malformed", "oversized"],
)
async def test_bad_frames_close_that_connection_only(served, header, caplog):
    _, _, path = served
    async with await Client.connect(path) as good:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(header + b"\0" * 10)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: closed by the server
        writer.close()
        reply = await good.stub(SERVICE).Connect(task.ConnectRequest(id="7"))
        assert reply.shim_pid == 7
    assert "closing connection" in caplog.text


async def test_peer_disconnect_mid_request_cancels_the_handler(served):
    server, impl, path = served
    client = await Client.connect(path)
    call = asyncio.create_task(client.stub(SERVICE).Wait(task.WaitRequest(id="c")))
    await asyncio.wait_for(impl.wait_started.wait(), 5)
    await client.close()
    with pytest.raises(TtrpcError) as err:
        await call
    assert err.value.code == Code.UNAVAILABLE
    await asyncio.wait_for(impl.wait_cancelled.wait(), 5)
    for _ in range(100):
        if server.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert server.connections == 0


async def test_server_going_away_fails_pending_calls(tmp_path):
    impl = FakeTask()
    server = Server()
    server.register(SERVICE, impl)
    path = str(tmp_path / "s.sock")
    await server.start(path=path)
    client = await Client.connect(path)
    call = asyncio.create_task(client.stub(SERVICE).Wait(task.WaitRequest(id="c")))
    await asyncio.wait_for(impl.wait_started.wait(), 5)
    await server.close()
    with pytest.raises(TtrpcError) as err:
        await asyncio.wait_for(call, 5)
    assert err.value.code == Code.UNAVAILABLE
    await client.close()


async def test_dial_failure_is_unavailable(tmp_path):
    with pytest.raises(TtrpcError) as err:
        await Client.connect(str(tmp_path / "nothing.sock"))
    assert err.value.code == Code.UNAVAILABLE and "nothing.sock" in err.value.message


async def test_listening_socket_can_be_passed_in(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "pre.sock")
    sock.bind(path)
    sock.listen()
    server = Server()
    server.register(SERVICE, FakeTask())
    await server.start(sock=sock)
    async with await Client.connect("unix://" + path) as client:
        assert (await client.stub(SERVICE).Connect(task.ConnectRequest(id="3"))).shim_pid == 3
    await server.close()
