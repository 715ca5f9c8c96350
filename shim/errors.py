"""The one place where runtime errors become ttrpc status codes (containerd's errdefs mapping)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pyoci.runtime.errors import AlreadyExists, ConfigError, InvalidState, NotFound, PyociError, Unsupported
from pyoci.ttrpc import Code, TtrpcError

log = logging.getLogger("pyoci.shim")

_CODES = (
    (ConfigError, Code.INVALID_ARGUMENT),
    (NotFound, Code.NOT_FOUND),
    (AlreadyExists, Code.ALREADY_EXISTS),
    (InvalidState, Code.FAILED_PRECONDITION),
    (Unsupported, Code.FAILED_PRECONDITION),
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


def not_found(message: str) -> TtrpcError:
    return TtrpcError(Code.NOT_FOUND, message)


def precondition(message: str) -> TtrpcError:
    return TtrpcError(Code.FAILED_PRECONDITION, message)
