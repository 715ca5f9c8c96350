"""The one place where errors become ttrpc status codes (containerd's errdefs mapping).

The shim's own code raises the runtime's typed errors (:mod:`pyoci.runtime.errors`, plus the two below that
only the shim needs); ``status(what)`` prefixes a runtime call's error with what was being done, and
``boundary`` turns whatever reaches a Task handler's edge into a :class:`TtrpcError`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

from google.protobuf.descriptor import ServiceDescriptor

from pyoci.runtime.errors import AlreadyExists, ConfigError, InvalidState, NotFound, PyociError, Unsupported
from pyoci.ttrpc import Code, TtrpcError

log = logging.getLogger("pyoci.shim")


class InvalidArgument(PyociError):
    """The request asks for something pyoci refuses (e.g. the SystemdCgroup runc option)."""


class Unimplemented(PyociError):
    """The operation is not implemented by pyoci (checkpoint/restore)."""


_CODES = (
    (ConfigError, Code.INVALID_ARGUMENT),
    (InvalidArgument, Code.INVALID_ARGUMENT),
    (NotFound, Code.NOT_FOUND),
    (AlreadyExists, Code.ALREADY_EXISTS),
    (InvalidState, Code.FAILED_PRECONDITION),
    (Unsupported, Code.FAILED_PRECONDITION),
    (Unimplemented, Code.UNIMPLEMENTED),
)


def code_for(exc: PyociError) -> Code:
    return next((code for kind, code in _CODES if isinstance(exc, kind)), Code.UNKNOWN)


@contextlib.contextmanager
def status(what: str) -> Iterator[None]:
    """Run a task operation; runtime errors leave as a TtrpcError whose message starts with ``what``."""
    try:
        yield
    except TtrpcError:
        raise
    except PyociError as exc:
        raise TtrpcError(code_for(exc), f"{what}: {exc}") from None
    except OSError as exc:
        log.exception("%s", what)
        raise TtrpcError(Code.UNKNOWN, f"{what}: {exc}") from None


def boundary(service: ServiceDescriptor):
    """Class decorator: each method of ``service`` answers a typed error with its status code and message."""

    def wrap_class(cls):
        for method in service.methods:
            handler = cls.__dict__.get(method.name)
            if handler is not None:
                setattr(cls, method.name, _mapped(handler))
        return cls

    return wrap_class


def _mapped(handler):
    @functools.wraps(handler)
    async def mapped(self, request, context):
        try:
            return await handler(self, request, context)
        except PyociError as exc:
            raise TtrpcError(code_for(exc), str(exc)) from None

    return mapped
