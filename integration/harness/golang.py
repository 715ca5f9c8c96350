"""The environment for building a peer tool with Go from the module proxy into a cache of its own."""

from __future__ import annotations

import os
from pathlib import Path


def go_env(root: Path, goflags: str, **extra: str) -> dict[str, str]:
    """This process's environment with Go's paths and caches under ``root`` and the local toolchain only."""
    env = dict(os.environ)
    env.update(
        GOPATH=str(root / "gopath"),
        GOMODCACHE=str(root / "gopath" / "pkg" / "mod"),
        GOCACHE=str(root / "go-build"),
        GOFLAGS=goflags,
        GOTOOLCHAIN="local",
        **extra,
    )
    return env
