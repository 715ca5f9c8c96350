"""A grpclib client for containerd's gRPC API, built from our protobuf service descriptors."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import empty_pb2, message_factory
from google.protobuf.message import Message
from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod

from pyoci.protos import containerd_services_pb2, containerd_version_pb2

EVENTS = containerd_services_pb2.DESCRIPTOR.services_by_name["Events"]
VERSION = containerd_version_pb2.DESCRIPTOR.services_by_name["Version"]


class ContainerdClient:
    def __init__(self, address: str, namespace: str) -> None:
        self.channel = Channel(path=address)
        self.namespace = namespace

    def _method(self, service, name: str, kind):
        method = service.methods_by_name[name]
        return kind(
            self.channel,
            f"/{service.full_name}/{name}",
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
        )

    def metadata(self) -> dict[str, str]:
        return {"containerd-namespace": self.namespace}

    async def version(self) -> containerd_version_pb2.VersionResponse:
        return await self._method(VERSION, "Version", UnaryUnaryMethod)(empty_pb2.Empty())

    async def subscribe(self, *filters: str) -> AsyncIterator[Message]:
        """Yield event envelopes (``containerd.services.events.v1.Envelope``) until cancelled."""
        method = self._method(EVENTS, "Subscribe", UnaryStreamMethod)
        async with method.open(metadata=self.metadata()) as stream:
            await stream.send_message(containerd_services_pb2.SubscribeRequest(filters=list(filters)), end=True)
            async for envelope in stream:
                yield envelope

    def close(self) -> None:
        self.channel.close()
