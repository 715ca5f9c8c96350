"""Our ttrpc client against containerd's real ttrpc server: Events/Forward, seen by an events subscriber."""

import asyncio
import time

import pytest
from google.protobuf import empty_pb2, timestamp_pb2

from pyoci.protos import containerd_events_pb2, containerd_events_ttrpc_pb2, typeurl
from pyoci.ttrpc.client import Client
from pyoci.ttrpc.status import Code, TtrpcError

FORWARD = containerd_events_ttrpc_pb2.DESCRIPTOR.services_by_name["Events"]


def envelope(namespace: str, topic: str, event) -> containerd_events_ttrpc_pb2.ForwardRequest:
    now = time.time_ns()
    return containerd_events_ttrpc_pb2.ForwardRequest(
        envelope=containerd_events_ttrpc_pb2.Envelope(
            timestamp=timestamp_pb2.Timestamp(seconds=now // 10**9, nanos=now % 10**9),
            namespace=namespace,
            topic=topic,
            event=typeurl.pack(event),
        )
    )


async def test_forward_task_oom_reaches_containerd_subscribers(containerd, grpc_client):
    received = asyncio.Queue()

    async def subscribe():
        async for env in grpc_client.subscribe('topic=="/tasks/oom"'):
            await received.put(env)

    subscriber = asyncio.create_task(subscribe())
    try:
        await asyncio.sleep(0.3)  # let the subscription register before publishing
        async with await Client.connect(containerd.ttrpc_address) as client:
            await client.stub(FORWARD).Forward(
                envelope(grpc_client.namespace, "/tasks/oom", containerd_events_pb2.TaskOOM(container_id="oom-c1")),
                timeout=5,
                metadata={"containerd-namespace-ttrpc": grpc_client.namespace},
            )
        env = await asyncio.wait_for(received.get(), 10)
    finally:
        subscriber.cancel()
        await asyncio.gather(subscriber, return_exceptions=True)
    assert env.topic == "/tasks/oom" and env.namespace == grpc_client.namespace
    assert env.event.type_url == "containerd.events.TaskOOM"
    assert typeurl.unpack(env.event, containerd_events_pb2.TaskOOM).container_id == "oom-c1"


async def test_containerd_rejects_an_envelope_without_timestamp(containerd, grpc_client):
    if not (await grpc_client.version()).version.startswith("1.6"):
        pytest.skip("containerd 1.7+ stamps such envelopes itself; the check is 1.6's (events/exchange)")
    request = containerd_events_ttrpc_pb2.ForwardRequest(
        envelope=containerd_events_ttrpc_pb2.Envelope(
            namespace="pyoci-test", topic="/tasks/oom", event=typeurl.pack(containerd_events_pb2.TaskOOM())
        )
    )
    async with await Client.connect(containerd.ttrpc_address) as client:
        try:
            await client.call(FORWARD.full_name, "Forward", request, empty_pb2.Empty, timeout=5)
        except TtrpcError as err:
            assert err.code != Code.OK and "timestamp" in err.message
        else:
            raise AssertionError("containerd accepted an envelope without a timestamp")
