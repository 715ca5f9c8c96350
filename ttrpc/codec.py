"""The ttrpc frame codec, sans-IO: bytes in, frames out; frames in, bytes out.

A frame is a 10-byte header (big-endian uint32 payload length, uint32 stream id, uint8 type, uint8
flags) followed by the payload, at most 4 MiB. Clients use odd, strictly increasing stream ids.
Nothing here does I/O or knows about asyncio; the client and server are thin shells around it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
MAX_MESSAGE = 4 << 20


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class ProtocolError(Exception):
    """The byte stream cannot be ttrpc: the connection must be closed (the reason says why)."""


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    type: FrameType
    payload: bytes
    flags: int = 0


def encode_frame(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(frame.payload)} bytes exceeds the {MAX_MESSAGE} byte limit")
    return HEADER.pack(len(frame.payload), frame.stream_id, frame.type, frame.flags) + frame.payload


class FrameDecoder:
    """Accumulates bytes and returns the complete frames they contain.

    Raises ProtocolError on a header that cannot be valid (oversized length, unknown type, stream 0);
    after that the decoder is unusable, as the stream has lost its framing.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Take ``data`` and return every frame now complete."""
        self.receive(data)
        frames: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def receive(self, data: bytes) -> None:
        """Take ``data``; frames are then taken one at a time with :meth:`next_frame` (so that a reader
        applying backpressure holds at most one read's worth of undecoded frames)."""
        if self._broken:
            raise ProtocolError(self._broken)
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._broken:
            raise ProtocolError(self._broken)
        if len(self._buf) < HEADER_SIZE:
            return None
        length, stream_id, ftype, flags = HEADER.unpack_from(self._buf)
        problem = self._check_header(length, stream_id, ftype)
        if problem:
            self._broken = problem
            raise ProtocolError(problem)
        end = HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        frame = Frame(stream_id, FrameType(ftype), bytes(self._buf[HEADER_SIZE:end]), flags)
        del self._buf[:end]
        return frame

    def _check_header(self, length: int, stream_id: int, ftype: int) -> str | None:
        if length > self._max:
            return f"frame of {length} bytes on stream {stream_id} exceeds the {self._max} byte limit"
        if ftype not in FrameType._value2member_map_:
            return f"frame of unknown type {ftype} on stream {stream_id}"
        if stream_id == 0:
            return "frame on stream 0"
        return None


class ClientStreams:
    """Allocates the client's odd, increasing stream ids."""

    def __init__(self) -> None:
        self._next = 1

    def next_id(self) -> int:
        sid = self._next
        if sid > 0xFFFFFFFF:
            raise ProtocolError("stream ids exhausted on this connection")
        self._next += 2
        return sid


class ServerStreams:
    """Checks the stream ids of incoming requests: odd and strictly increasing (as ttrpc's server does)."""

    def __init__(self) -> None:
        self._last = 0

    def accept(self, stream_id: int) -> str | None:
        """None if the request may be served, else the reason to refuse it (InvalidArgument)."""
        if stream_id % 2 == 0:
            return f"stream id {stream_id} is even: client streams must be odd"
        if stream_id <= self._last:
            return f"stream id {stream_id} is not greater than the last one ({self._last})"
        self._last = stream_id
        return None
