"""The asyncio ttrpc client: unary calls multiplexed on one connection by odd stream ids."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import TypeVar

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from pyoci.protos import ttrpc_request_pb2

from .codec import ClientStreams, Frame, FrameDecoder, FrameType, ProtocolError, encode_frame
from .status import Code, TtrpcError

log = logging.getLogger("pyoci.ttrpc")

R = TypeVar("R", bound=Message)
Metadata = Mapping[str, str] | Iterable[tuple[str, str]]


class Client:
    """A connection to a ttrpc server. Use ``await Client.connect(path)``; ``close()`` when done."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._streams = ClientStreams()
        self._pending: dict[int, asyncio.Future[ttrpc_request_pb2.Response]] = {}
        self._closed: TtrpcError | None = None
        self._receiver = asyncio.create_task(self._receive())

    @classmethod
    async def connect(cls, path: str) -> Client:
        path = path.removeprefix("unix://")
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as exc:
            raise TtrpcError(Code.UNAVAILABLE, f"ttrpc: dial {path}: {exc.strerror or exc}") from exc
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> R:
        if self._closed:
            raise self._closed
        pairs = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
        envelope = ttrpc_request_pb2.Request(
            service=service,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=int(timeout * 1e9) if timeout else 0,
            metadata=[ttrpc_request_pb2.KeyValue(key=k, value=v) for k, v in pairs],
        )
        stream_id = self._streams.next_id()
        try:
            data = encode_frame(Frame(stream_id, FrameType.REQUEST, envelope.SerializeToString()))
        except ProtocolError as exc:
            raise TtrpcError(Code.RESOURCE_EXHAUSTED, str(exc)) from exc
        future: asyncio.Future[ttrpc_request_pb2.Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            self._writer.write(data)
            await self._writer.drain()
            async with asyncio.timeout(timeout):
                response = await future
        except TimeoutError:
            raise TtrpcError(Code.DEADLINE_EXCEEDED, f"{service}/{method}: deadline exceeded") from None
        except (ConnectionError, OSError) as exc:
            raise TtrpcError(Code.UNAVAILABLE, f"ttrpc: {exc}") from exc
        finally:
            self._pending.pop(stream_id, None)
        if response.HasField("status") and response.status.code != Code.OK:
            raise TtrpcError(response.status.code, response.status.message)
        result = response_type()
        try:
            result.ParseFromString(response.payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INTERNAL, f"{service}/{method}: undecodable response: {exc}") from exc
        return result

    def stub(self, service: ServiceDescriptor) -> Stub:
        return Stub(self, service)

    async def close(self) -> None:
        self._fail(TtrpcError(Code.UNAVAILABLE, "ttrpc: client closed"))
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _receive(self) -> None:
        decoder = FrameDecoder()
        reason = "ttrpc: connection closed by the server"
        try:
            while data := await self._reader.read(65536):
                for frame in decoder.feed(data):
                    if frame.type != FrameType.RESPONSE:
                        continue
                    future = self._pending.get(frame.stream_id)
                    if future is None or future.done():
                        continue  # the caller gave up (timeout or cancellation)
                    response = ttrpc_request_pb2.Response()
                    try:
                        response.ParseFromString(frame.payload)
                    except DecodeError as exc:
                        future.set_exception(TtrpcError(Code.INTERNAL, f"ttrpc: undecodable response: {exc}"))
                        continue
                    future.set_result(response)
        except ProtocolError as exc:
            reason = f"ttrpc: {exc}"
            log.warning("ttrpc: closing client connection: %s", exc)
        except (ConnectionError, OSError) as exc:
            reason = f"ttrpc: {exc}"
        self._fail(TtrpcError(Code.UNAVAILABLE, reason))
        self._writer.close()

    def _fail(self, error: TtrpcError) -> None:
        if self._closed is None:
            self._closed = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)


class Stub:
    """``await stub.Method(request, timeout=..., metadata=...)`` for each RPC of a service descriptor."""

    def __init__(self, client: Client, service: ServiceDescriptor) -> None:
        self._client = client
        self._service = service.full_name
        self._outputs = {m.name: message_factory.GetMessageClass(m.output_type) for m in service.methods}

    def __getattr__(self, name: str):
        try:
            output = self._outputs[name]
        except KeyError:
            raise AttributeError(f"{self._service} has no method {name}") from None

        async def invoke(request: Message, **kwargs) -> Message:
            return await self._client.call(self._service, name, request, output, **kwargs)

        return invoke
