"""The asyncio ttrpc server: unary requests, handled concurrently, answered by stream id.

Services are registered from protobuf service descriptors: each RPC ``M`` of the service calls
``await impl.M(request, context)``; an RPC the object lacks answers Unimplemented. A handler signals
failure by raising :class:`TtrpcError`; anything else becomes Unknown (and is logged).

Each connection is bounded, whatever its peer does. Like containerd/ttrpc (whose connection loop writes
each response before taking the next, so a peer that does not read stops being read), a connection stops
reading while its unsent responses exceed a high-water mark; and it has at most ``max_in_flight``
requests being handled or answered: a request beyond that is answered ResourceExhausted at once (not
queued, so that long calls such as Wait can never starve a Kill behind them). A frame that breaks the
framing (garbage, oversized) closes that connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from pyoci.protos import google_rpc_status_pb2, ttrpc_request_pb2

from .codec import Frame, FrameDecoder, FrameType, ProtocolError, ServerStreams, encode_frame
from .status import Code, TtrpcError

log = logging.getLogger("pyoci.ttrpc")

Handler = Callable[[Message, "Context"], Awaitable[Message]]

MAX_IN_FLIGHT = 1024  # requests handled or being answered at once, per connection
HIGH_WATER = 256 << 10  # bytes of unsent responses above which a connection stops reading


@dataclass(slots=True)
class Context:
    """What a handler knows about its call besides the request."""

    service: str
    method: str
    metadata: dict[str, list[str]] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() value, or None

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.metadata.get(key)
        return values[0] if values else default


@dataclass(frozen=True, slots=True)
class _Method:
    input: type[Message]
    handler: Handler | None


class Server:
    def __init__(
        self,
        *,
        require_same_user: bool = True,
        read_size: int = 65536,
        max_in_flight: int = MAX_IN_FLIGHT,
        high_water: int = HIGH_WATER,
    ) -> None:
        self._methods: dict[tuple[str, str], _Method] = {}
        self._services: set[str] = set()
        self._require_same_user = require_same_user
        self._read_size = read_size
        self._max_in_flight = max_in_flight
        self._high_water = high_water
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def register(self, service: ServiceDescriptor, impl: object, *, name: str | None = None) -> None:
        """Serve ``service`` (or the same methods under another service ``name``) with ``impl``."""
        service_name = name or service.full_name
        self._services.add(service_name)
        for method in service.methods:
            handler = getattr(impl, method.name, None)
            self._methods[(service_name, method.name)] = _Method(
                message_factory.GetMessageClass(method.input_type), handler
            )

    async def start(self, *, path: str | None = None, sock: socket.socket | None = None) -> None:
        """Listen on a unix socket ``path`` or an already listening ``sock``."""
        self._server = await asyncio.start_unix_server(self._on_connection, path=path, sock=sock)

    async def close(self) -> None:
        """Stop accepting, cancel in-flight connections and wait for them."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if self._require_same_user and not _peer_is_same_user(writer):
                log.warning("ttrpc: refusing a connection from another user")
                return
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # close() cancels connections; end quietly: asyncio 3.11's done-callback for a connection
            # task calls task.exception(), which on a cancelled task logs a CancelledError traceback.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        streams = ServerStreams()
        calls: set[asyncio.Task[None]] = set()
        writer.transport.set_write_buffer_limits(high=self._high_water)
        try:
            while True:
                await writer.drain()  # backpressure: read nothing more while answers pile up unread
                data = await reader.read(self._read_size)
                if not data:
                    return
                try:
                    decoder.receive(data)
                    while (frame := decoder.next_frame()) is not None:
                        if frame.type != FrameType.REQUEST:
                            continue  # unary only: stray data frames are ignored, as ttrpc ignores unknown ones
                        refused = streams.accept(frame.stream_id)
                        if refused:
                            await _refuse(writer, frame.stream_id, Code.INVALID_ARGUMENT, refused)
                        elif len(calls) >= self._max_in_flight:
                            busy = f"more than {self._max_in_flight} requests in flight on this connection"
                            await _refuse(writer, frame.stream_id, Code.RESOURCE_EXHAUSTED, busy)
                        else:
                            call = asyncio.create_task(self._call(frame, writer))
                            calls.add(call)
                            call.add_done_callback(calls.discard)
                except ProtocolError as exc:
                    log.warning("ttrpc: closing connection: %s", exc)
                    return
        except (ConnectionError, OSError) as exc:
            log.debug("ttrpc: connection lost: %s", exc)
        finally:
            # The peer is gone (or broke framing): its unfinished calls have nobody to answer to.
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    async def _call(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        """Handle one request and answer it; the call counts as in flight until its answer is handed to a
        write buffer below the high-water mark."""
        response = await self._dispatch(frame.payload)
        if writer.is_closing():
            return
        try:
            _send(writer, frame.stream_id, response)
            await writer.drain()
        except ProtocolError as exc:
            log.error("ttrpc: response on stream %d: %s", frame.stream_id, exc)
            _send(writer, frame.stream_id, _status_response(Code.RESOURCE_EXHAUSTED, str(exc)))
        except (ConnectionError, OSError):
            pass

    async def _dispatch(self, payload: bytes) -> ttrpc_request_pb2.Response:
        request = ttrpc_request_pb2.Request()
        try:
            request.ParseFromString(payload)
        except DecodeError as exc:
            return _status_response(Code.INVALID_ARGUMENT, f"undecodable request: {exc}")
        method = self._methods.get((request.service, request.method))
        if method is None or method.handler is None:
            what = f"method {request.method}" if request.service in self._services else f"service {request.service}"
            return _status_response(Code.UNIMPLEMENTED, what)
        message = method.input()
        try:
            message.ParseFromString(request.payload)
        except DecodeError as exc:
            return _status_response(Code.INVALID_ARGUMENT, f"{request.service}/{request.method}: {exc}")
        context = Context(request.service, request.method)
        for kv in request.metadata:
            context.metadata.setdefault(kv.key, []).append(kv.value)
        timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        if timeout is not None:
            context.deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                result = await method.handler(message, context)
        except TtrpcError as exc:
            return _status_response(exc.code, exc.message)
        except TimeoutError:
            return _status_response(Code.DEADLINE_EXCEEDED, f"{request.service}/{request.method}: deadline exceeded")
        except Exception as exc:
            log.exception("ttrpc: %s/%s failed", request.service, request.method)
            return _status_response(Code.UNKNOWN, f"{type(exc).__name__}: {exc}")
        return ttrpc_request_pb2.Response(status=google_rpc_status_pb2.Status(), payload=result.SerializeToString())


def _status_response(code: Code, message: str) -> ttrpc_request_pb2.Response:
    return ttrpc_request_pb2.Response(status=google_rpc_status_pb2.Status(code=int(code), message=message))


async def _refuse(writer: asyncio.StreamWriter, stream_id: int, code: Code, message: str) -> None:
    _send(writer, stream_id, _status_response(code, message))
    await writer.drain()


def _send(writer: asyncio.StreamWriter, stream_id: int, response: Any) -> None:
    writer.write(encode_frame(Frame(stream_id, FrameType.RESPONSE, response.SerializeToString())))


def _peer_is_same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    return uid == os.geteuid() and gid == os.getegid()
