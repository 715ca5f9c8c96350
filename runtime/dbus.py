"""A minimal D-Bus client: sans-IO message marshalling plus a thin blocking unix-socket connection.

Enough for the systemd cgroup driver: ``AUTH EXTERNAL``, ``Hello``, method calls whose arguments are basic
types, arrays, structs, dict entries and variants (``a(sv)``, ``a(sa(sv))``), replies and errors matched by
serial, and signals (``AddMatch`` + waiting for one, e.g. systemd's ``JobRemoved``). No fd passing.

Values: integers, ``bool``, ``float``, ``str`` (also for ``o`` and ``g``), ``bytes`` for ``ay``, ``list`` for
other arrays, ``dict`` for ``a{..}``, ``tuple`` for structs and :class:`Variant` for ``v``.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections import namedtuple
from collections.abc import Callable
from dataclasses import field

from .errors import PyociError
from .records import mutable_record

TYPE_CHECKING = False  # typing costs ~3 ms to import (pyoci commands reach this module through open_cgroup)
if TYPE_CHECKING:
    from typing import Any

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1
MAX_MESSAGE = 128 * 1024 * 1024  # the specification's limit
MAX_DEPTH = 32  # nesting of arrays and of structs, each (the specification's limits)

_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d", "h": "I"}
_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4, "s": 4, "o": 4, "g": 1}
_ALIGN.update({"a": 4, "(": 8, "{": 8, "v": 1})
_FIELDS = {1: "path", 2: "interface", 3: "member", 4: "error_name", 5: "reply_serial", 6: "destination"}
_FIELDS.update({7: "sender", 8: "signature", 9: "unix_fds"})
_FIELD_TYPES = {"path": "o", "interface": "s", "member": "s", "error_name": "s", "reply_serial": "u"}
_FIELD_TYPES.update({"destination": "s", "sender": "s", "signature": "g", "unix_fds": "u"})
_FIELD_CODES = {name: code for code, name in _FIELDS.items()}


class DBusError(PyociError):
    """A D-Bus failure: ``name`` is the error name (``org.freedesktop.DBus.Error.*`` or the peer's own)."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message
        super().__init__(f"{name}: {message}" if message else name)


Variant = namedtuple("Variant", ["signature", "value"])  # a D-Bus variant (typing.NamedTuple imports typing)


# ------------------------------------------------------------------------------------------ signatures


def split_signature(signature: str) -> list[str]:
    """The complete types of a signature, e.g. ``"sa(sv)u"`` → ``["s", "a(sv)", "u"]``; DBusError if invalid."""
    types, i = [], 0
    while i < len(signature):
        end = _type_end(signature, i, 0, 0)
        types.append(signature[i:end])
        i = end
    return types


def _type_end(sig: str, i: int, arrays: int, structs: int) -> int:
    if arrays > MAX_DEPTH or structs > MAX_DEPTH:
        raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"{sig!r} nests too deeply")
    if i >= len(sig):
        raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"{sig!r} ends in the middle of a type")
    c = sig[i]
    if c in _FIXED or c in "sogv":
        return i + 1
    if c == "a":
        if sig[i + 1 : i + 2] == "{":
            key = sig[i + 2 : i + 3]
            if key not in _FIXED and key not in "sog":
                raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"{sig!r}: dict key must be basic")
            end = _type_end(sig, i + 3, arrays + 1, structs + 1)
            if sig[end : end + 1] != "}":
                raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"{sig!r}: dict entry needs 2 types")
            return end + 1
        return _type_end(sig, i + 1, arrays + 1, structs)
    if c == "(":
        j = i + 1
        if sig[j : j + 1] == ")":
            raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"{sig!r}: empty struct")
        while sig[j : j + 1] != ")":
            j = _type_end(sig, j, arrays, structs + 1)
        return j + 1
    raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"{sig!r}: unexpected {c!r}")


# ------------------------------------------------------------------------------------------- encoding


class _Writer:
    def __init__(self, start: int = 0) -> None:
        self.buf = bytearray()
        self.start = start  # offset of buf[0] in the message (alignment is relative to the message start)

    def align(self, n: int) -> None:
        self.buf += b"\0" * (-(self.start + len(self.buf)) % n)

    def write(self, sig: str, value: Any) -> None:
        c = sig[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            if c == "b":
                value = 1 if value else 0
            try:
                self.buf += struct.pack("<" + _FIXED[c], value)
            except struct.error as exc:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"{value!r} as {c!r}: {exc}") from None
        elif c in "so":
            raw = value.encode()
            if b"\0" in raw:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"{value!r}: NUL in a string")
            self.buf += struct.pack("<I", len(raw)) + raw + b"\0"
        elif c == "g":
            raw = value.encode()
            if len(raw) > 255:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", "signature longer than 255 bytes")
            self.buf += bytes([len(raw)]) + raw + b"\0"
        elif c == "v":
            split_signature(value.signature)  # validates
            if len(split_signature(value.signature)) != 1:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"variant of {value.signature!r}")
            self.write("g", value.signature)
            self.write(value.signature, value.value)
        elif c == "a":
            self._array(sig[1:], value)
        elif c == "(":
            inner = split_signature(sig[1:-1])
            if len(value) != len(inner):
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"{value!r} does not match {sig!r}")
            for t, v in zip(inner, value, strict=True):
                self.write(t, v)
        else:
            raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"cannot encode {sig!r}")

    def _array(self, elem: str, value: Any) -> None:
        self.buf += b"\0\0\0\0"
        at = len(self.buf)
        self.align(_ALIGN[elem[0]])  # padding to the first element is not counted in the length
        begin = len(self.buf)
        if elem == "y":
            self.buf += bytes(value)
        elif elem[0] == "{":
            key, val = split_signature(elem[1:-1])
            for k, v in value.items():
                self.align(8)
                self.write(key, k)
                self.write(val, v)
        else:
            for v in value:
                self.write(elem, v)
        struct.pack_into("<I", self.buf, at - 4, len(self.buf) - begin)


def encode_body(signature: str, args: tuple | list, start: int = 0) -> bytes:
    """The marshalled arguments (little-endian), aligned as if they began at offset ``start`` of a message."""
    types = split_signature(signature)
    if len(types) != len(args):
        raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"{len(args)} arguments for {signature!r}")
    w = _Writer(start)
    for t, v in zip(types, args, strict=True):
        w.write(t, v)
    return bytes(w.buf)


# ------------------------------------------------------------------------------------------- decoding


class _Reader:
    def __init__(self, data: bytes, pos: int, little: bool) -> None:
        self.data, self.pos, self.e = data, pos, "<" if little else ">"

    def align(self, n: int) -> None:
        self.pos += -self.pos % n
        if self.pos > len(self.data):
            raise _truncated()

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _truncated()
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def read(self, sig: str) -> Any:
        c = sig[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            fmt = self.e + _FIXED[c]
            (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
            if c == "b":
                if value > 1:
                    raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"boolean value {value}")
                return bool(value)
            return value
        if c in "sog":
            n = self.take(1)[0] if c == "g" else struct.unpack(self.e + "I", self.take(4))[0]
            raw = self.take(n + 1)
            if raw[-1] != 0:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", "string without its NUL")
            return raw[:-1].decode()
        if c == "v":
            signature = self.read("g")
            if len(split_signature(signature)) != 1:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"variant of {signature!r}")
            return Variant(signature, self.read(signature))
        if c == "a":
            (n,) = struct.unpack(self.e + "I", self.take(4))
            if n > 64 * 1024 * 1024:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"array of {n} bytes")
            elem = sig[1:]
            self.align(_ALIGN[elem[0]])
            end = self.pos + n
            if end > len(self.data):
                raise _truncated()
            if elem == "y":
                return self.take(n)
            if elem[0] == "{":
                key, val = split_signature(elem[1:-1])
                out: Any = {}
                while self.pos < end:
                    self.align(8)
                    k = self.read(key)
                    out[k] = self.read(val)
            else:
                out = []
                while self.pos < end:
                    out.append(self.read(elem))
            if self.pos != end:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", "array elements overrun its length")
            return out
        if c == "(":
            return tuple(self.read(t) for t in split_signature(sig[1:-1]))
        raise DBusError("org.freedesktop.DBus.Error.InvalidSignature", f"cannot decode {sig!r}")


def _truncated() -> DBusError:
    return DBusError("org.freedesktop.DBus.Error.InvalidArgs", "message is truncated")


def decode_body(signature: str, data: bytes, start: int = 0, little: bool = True) -> tuple:
    """The arguments of a body marshalled as if it began at offset ``start`` of a message."""
    pad = start % 8  # alignment is relative to the message start: pad the data to the same phase
    r = _Reader(b"\0" * pad + bytes(data), pad, little)
    out = tuple(r.read(t) for t in split_signature(signature))
    if r.pos != len(r.data):
        raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", "trailing bytes after the arguments")
    return out


# -------------------------------------------------------------------------------------------- messages


@mutable_record
class Message:
    type: int
    serial: int = 0
    flags: int = 0
    path: str | None = None
    interface: str | None = None
    member: str | None = None
    error_name: str | None = None
    reply_serial: int | None = None
    destination: str | None = None
    sender: str | None = None
    signature: str = ""
    body: tuple = field(default_factory=tuple)

    def error(self) -> DBusError:
        text = self.body[0] if self.body and isinstance(self.body[0], str) else ""
        return DBusError(self.error_name or "org.freedesktop.DBus.Error.Failed", text)


def encode_message(msg: Message) -> bytes:
    body = encode_body(msg.signature, msg.body, 0)
    fields = [
        (code, Variant(_FIELD_TYPES[name], getattr(msg, name)))
        for code, name in _FIELDS.items()
        if name not in ("signature", "unix_fds") and getattr(msg, name) is not None
    ]
    if msg.signature:
        fields.append((_FIELD_CODES["signature"], Variant("g", msg.signature)))
    w = _Writer()
    w.buf += struct.pack("<cBBBII", b"l", msg.type, msg.flags, 1, len(body), msg.serial)
    w.write("a(yv)", fields)
    w.align(8)
    out = bytes(w.buf) + body
    if len(out) > MAX_MESSAGE:
        raise DBusError("org.freedesktop.DBus.Error.LimitsExceeded", f"message of {len(out)} bytes")
    return out


def message_length(data: bytes) -> int | None:
    """The whole length of the message ``data`` starts with, or None until its first 16 bytes are there."""
    if len(data) < 16:
        return None
    if data[:1] not in (b"l", b"B"):
        raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"bad endianness byte {data[:1]!r}")
    e = "<" if data[:1] == b"l" else ">"
    body_len, _serial, fields_len = struct.unpack(e + "III", data[4:16])
    total = 16 + fields_len + (-(16 + fields_len) % 8) + body_len
    if total > MAX_MESSAGE:
        raise DBusError("org.freedesktop.DBus.Error.LimitsExceeded", f"message of {total} bytes")
    return total


def decode_message(data: bytes) -> Message:
    """One whole message (``message_length(data)`` bytes)."""
    total = message_length(data)
    if total is None or len(data) < total:
        raise _truncated()
    little = data[:1] == b"l"
    r = _Reader(data[:total], 0, little)
    _endian, mtype, flags, version = struct.unpack("cBBB", r.take(4))
    if version != 1:
        raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"protocol version {version}")
    body_len, serial = struct.unpack(r.e + "II", r.take(8))
    msg = Message(type=mtype, serial=serial, flags=flags)
    for code, variant in r.read("a(yv)"):
        name = _FIELDS.get(code)
        if name is not None:
            if variant.signature != _FIELD_TYPES[name]:
                raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", f"header field {name} of {variant[0]!r}")
            setattr(msg, name, variant.value)
    r.align(8)
    if r.pos + body_len != total:
        raise DBusError("org.freedesktop.DBus.Error.InvalidArgs", "header and body lengths disagree")
    msg.body = decode_body(msg.signature, data[r.pos : total], r.pos, little) if msg.signature else ()
    return msg


def auth_external(uid: int) -> bytes:
    """The client's opening of the SASL exchange: a NUL, then ``AUTH EXTERNAL`` with the uid in hex digits."""
    return b"\0AUTH EXTERNAL " + str(uid).encode().hex().encode() + b"\r\n"


# ------------------------------------------------------------------------------------------ connection

SYSTEM_BUS = "/run/dbus/system_bus_socket"
SYSTEMD_PRIVATE = "/run/systemd/private"


class Connection:
    """A blocking connection to a bus (``Hello`` sent) or straight to systemd's private socket."""

    def __init__(self, path: str, *, bus: bool = True, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.unique_name = ""
        self._serial = 0
        self._buf = b""
        self._signals: list[Message] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self._authenticate()
            if bus:
                (self.unique_name,) = self.call(
                    "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello"
                )
        except BaseException:
            self._sock.close()
            raise

    def _authenticate(self) -> None:
        self._sock.sendall(auth_external(os.geteuid()))
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = self._sock.recv(256)
            if not chunk:
                raise DBusError("org.freedesktop.DBus.Error.AuthFailed", "the peer closed the connection")
            line += chunk
            if len(line) > 4096:
                raise DBusError("org.freedesktop.DBus.Error.AuthFailed", "overlong answer")
        if not line.startswith(b"OK "):
            raise DBusError("org.freedesktop.DBus.Error.AuthFailed", line.decode(errors="replace").strip())
        self._sock.sendall(b"BEGIN\r\n")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message) -> int:
        self._serial += 1
        msg.serial = self._serial
        self._sock.sendall(encode_message(msg))
        return msg.serial

    def call(self, destination: str, path: str, interface: str, member: str, signature: str = "", *args: Any) -> tuple:
        """Call a method and return its reply's arguments; an error reply raises :class:`DBusError`."""
        serial = self.send(
            Message(
                METHOD_CALL,
                path=path,
                interface=interface,
                member=member,
                destination=destination,
                signature=signature,
                body=tuple(args),
            )
        )
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._receive(deadline, f"{interface}.{member}")
            if msg.reply_serial == serial and msg.type in (METHOD_RETURN, ERROR):
                if msg.type == ERROR:
                    raise msg.error()
                return msg.body
            if msg.type == SIGNAL:
                self._signals.append(msg)

    def wait_signal(self, match: Callable[[Message], bool], timeout: float | None = None) -> Message:
        """The first signal (already received or arriving) for which ``match`` is true."""
        for i, msg in enumerate(self._signals):
            if match(msg):
                return self._signals.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self._receive(deadline, "a signal")
            if msg.type == SIGNAL:
                if match(msg):
                    return msg
                self._signals.append(msg)

    def _receive(self, deadline: float, waiting_for: str) -> Message:
        while True:
            n = message_length(self._buf)
            if n is not None and len(self._buf) >= n:
                msg = decode_message(self._buf[:n])
                self._buf = self._buf[n:]
                return msg
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                raise DBusError("org.freedesktop.DBus.Error.Timeout", f"no answer to {waiting_for} from {self.path}")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise DBusError("org.freedesktop.DBus.Error.Disconnected", f"{self.path} closed the connection")
            self._buf += chunk
