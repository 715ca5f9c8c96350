"""A grpclib client for the CRI (runtime.v1 RuntimeService and ImageService), from our protobuf descriptors."""

from __future__ import annotations

from google.protobuf import message_factory
from google.protobuf.message import Message
from grpclib.client import Channel, UnaryUnaryMethod

from pyoci.protos import cri_api_pb2 as cri

_SERVICES = [cri.DESCRIPTOR.services_by_name[name] for name in ("RuntimeService", "ImageService")]


class CriClient:
    """``await client.call("RunPodSandbox", cri.RunPodSandboxRequest(...))``; one channel per event loop."""

    def __init__(self, address: str, timeout: float = 120.0) -> None:
        self.channel = Channel(path=address)
        self.timeout = timeout
        self._methods: dict[str, UnaryUnaryMethod] = {}

    def _method(self, name: str) -> UnaryUnaryMethod:
        if name not in self._methods:
            service = next((s for s in _SERVICES if name in s.methods_by_name), None)
            if service is None:
                raise KeyError(f"no CRI method {name} in cri_api.proto")
            method = service.methods_by_name[name]
            self._methods[name] = UnaryUnaryMethod(
                self.channel,
                f"/{service.full_name}/{name}",
                message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type),
            )
        return self._methods[name]

    async def call(self, name: str, request: Message, timeout: float | None = None) -> Message:
        return await self._method(name)(request, timeout=timeout or self.timeout)

    def close(self) -> None:
        self.channel.close()
