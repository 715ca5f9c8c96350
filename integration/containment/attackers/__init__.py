"""Attacker programs for the containment tests: small static C programs, built once and cached."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
CACHE = Path(os.environ.get("PYOCI_CACHE", "/var/cache/pyoci")) / "attackers"


def build(name: str) -> Path:
    """The static binary of ``<name>.c`` (gcc -static), rebuilt when its source changes."""
    source = HERE / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = CACHE / f"{name}-{digest}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            tmp = binary.with_suffix(".tmp")
            subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp), str(source)], check=True, capture_output=True)
            os.replace(tmp, binary)
    return binary
