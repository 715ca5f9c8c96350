"""The offline pause image: pause.c compiled static (cached under /var/cache/pyoci/pause), packed as an OCI tar."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from integration.harness.image import _info, write_image
from integration.harness.versions import CACHE

PAUSE_IMAGE = "docker.io/pyoci/pause:offline"
PAUSE_SOURCE = Path(__file__).with_name("pause.c")


def pause_binary() -> Path:
    """The static pause program for this pause.c (built with gcc -static when not cached yet)."""
    source = PAUSE_SOURCE.read_bytes()
    binary = CACHE / "pause" / hashlib.sha256(source).hexdigest()[:16] / "pause"
    if binary.exists():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("building the pause image needs gcc (Debian: gcc, libc6-dev); ./dev setup installs them")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"pause.{os.getpid()}")
    result = subprocess.run(
        [gcc, "-static", "-Os", "-s", "-Wall", "-Werror", "-o", str(partial), str(PAUSE_SOURCE)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcc -static {PAUSE_SOURCE} failed:\n{result.stderr}")
    partial.rename(binary)
    return binary


def _layer(binary: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("pause", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary))
    return out.getvalue()


def build_pause_image(dest: Path, name: str = PAUSE_IMAGE) -> Path:
    """An OCI image layout tar (for ``ctr images import``) whose only file is /pause, its entrypoint."""
    return write_image(
        dest,
        _layer(pause_binary().read_bytes()),
        {"Entrypoint": ["/pause"], "User": "65535:65535"},
        {"io.containerd.image.name": name},
    )
