"""ttrpc errors: a ``google.rpc.Status`` (gRPC code + message) as one exception type."""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """gRPC status codes, by their gRPC names."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> Code:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class TtrpcError(Exception):
    """A failed call: raised by handlers to answer with a status, raised by the client on a status."""

    def __init__(self, code: Code | int, message: str = "") -> None:
        self.code = Code.of(int(code))
        self.message = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)
