"""A minimal WebSocket client (RFC 6455) for the CRI stream server's Exec and Attach URLs (v4.channel.k8s.io).

Each binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the final status (a JSON
metav1.Status: Success, or a Failure whose causes carry the ExitCode), 4 terminal resize.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PROTOCOL = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3


@dataclass
class StreamResult:
    stdout: bytes = b""
    stderr: bytes = b""
    status: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status.get("status") == "Success":
            return 0
        for cause in self.status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise AssertionError(f"no exit code in the stream status {self.status}")


class StreamSession:
    """An open v4.channel.k8s.io WebSocket: ``send(data)`` writes stdin, ``finish()`` collects until the close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> StreamSession:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
        )
        writer.write(request.encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace")
        if not head.startswith("HTTP/1.1 101"):
            writer.close()
            raise AssertionError(f"the stream server refused the WebSocket upgrade:\n{head}")
        return cls(reader, writer)

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x80 | opcode])
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def send(self, data: bytes) -> None:
        self.writer.write(self._frame(0x2, bytes([STDIN]) + data))
        await self.writer.drain()

    async def _message(self) -> tuple[int, bytes] | None:
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if second & 0x80 else b""
        payload = await self.reader.readexactly(size)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        opcode = first & 0x0F
        if opcode == 0x8:
            return None
        if opcode == 0x9:
            self.writer.write(self._frame(0xA, payload))
        return opcode, payload

    async def finish(self, timeout: float = 30) -> StreamResult:
        result = StreamResult()
        try:
            async with asyncio.timeout(timeout):
                while (message := await self._message()) is not None:
                    opcode, payload = message
                    if opcode not in (0x1, 0x2) or not payload:
                        continue
                    channel, data = payload[0], payload[1:]
                    if channel == STDOUT:
                        result.stdout += data
                    elif channel == STDERR:
                        result.stderr += data
                    elif channel == STATUS and data:
                        result.status = json.loads(data)
        except asyncio.IncompleteReadError:
            pass  # the server may drop the connection right after its close frame
        finally:
            self.writer.close()
        return result
