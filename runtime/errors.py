"""The runtime's errors: a small hierarchy that the CLI turns into messages + exit codes and the shim
into ttrpc status codes (one mapping each, at their boundary)."""

from __future__ import annotations

import errno as _errno
import os


class PyociError(Exception):
    """Base of every error the runtime raises on purpose."""


class ConfigError(PyociError):
    """The bundle's config.json (or a process/resources JSON) is invalid; the message names the field."""

    def __init__(self, path: str, reason: str, *, source: str = "config.json") -> None:
        self.path, self.reason, self.source = path, reason, source
        super().__init__(f"{source}: {path}: {reason}" if path else f"{source}: {reason}")


class NotFound(PyociError):
    """No such container (or process)."""


class AlreadyExists(PyociError):
    """A container with that id exists already."""


class InvalidState(PyociError):
    """The container is not in a state that allows the operation (e.g. delete of a running container)."""


class Unsupported(PyociError):
    """The host cannot do what was asked (e.g. an AppArmor profile without AppArmor)."""


class SetupError(PyociError):
    """A step of container setup failed: which step, the errno, and what it was doing."""

    def __init__(self, step: str, err: int, detail: str = "") -> None:
        self.step, self.errno, self.detail = step, err, detail
        name = _errno.errorcode.get(err, str(err)) if err else ""
        reason = f"{os.strerror(err)} ({name})" if err else ""
        text = ": ".join(p for p in (step, detail, reason) if p)
        super().__init__(text)


class HookError(PyociError):
    """A lifecycle hook failed or timed out."""
