"""Other containerd versions for the test matrix: Debian's trixie (1.7.x) and sid (2.1.x) packages.

The .deb is fetched with ``apt-get download`` through a private sources list (the machine's Debian
mirror, that suite only) and unpacked with ``dpkg-deb -x`` into a cache outside the repository. Nothing
is installed over the system's packages; the system's apt configuration and lists are untouched.

    PYOCI_CONTAINERD=1.6|1.7|2.1   picks the version for the integration tests (default 1.6: the system's)
    python -m integration.harness.versions 1.7   fetches it and prints the containerd binary's path
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("PYOCI_CACHE", "/var/cache/pyoci"))
SUITES = {"1.7": "trixie", "2.1": "sid"}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    for line in (
        Path("/etc/apt/sources.list").read_text().splitlines() if Path("/etc/apt/sources.list").exists() else []
    ):
        parts = line.split()
        if parts[:1] == ["deb"] and len(parts) >= 3:
            return parts[1] if not parts[1].startswith("[") else parts[2]
    return "http://deb.debian.org/debian"


def _apt(root: Path, *args: str, cwd: Path | None = None) -> None:
    options = [
        f"-oDir::Etc::sourcelist={root / 'sources.list'}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={root / 'lists'}",
        f"-oDir::Cache={root / 'cache'}",
        "-oAPT::Get::List-Cleanup=0",
        "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root",
    ]
    subprocess.run(["apt-get", "-qq", *options, *args], cwd=cwd or root, check=True, stdout=subprocess.DEVNULL)


def containerd_binary(version: str) -> str:
    """Path of the containerd binary for ``version`` ("1.6" = the system's), fetching it if needed."""
    if version in ("", "1.6", "system"):
        return "/usr/bin/containerd"
    suite = SUITES.get(version)
    if suite is None:
        raise ValueError(f"unknown containerd version {version!r} (known: 1.6, {', '.join(SUITES)})")
    root = CACHE / f"containerd-{suite}"
    binary = root / "root" / "usr" / "bin" / "containerd"
    if binary.exists():
        return str(binary)
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb [signed-by={KEYRING}] {_mirror()} {suite} main\n")
    _apt(root, "update")
    subprocess.run(["rm", "-f", *[str(p) for p in (root / "debs").glob("*.deb")]], check=True)
    _apt(root, "download", "containerd", cwd=root / "debs")  # apt-get download writes into the cwd
    debs = sorted((root / "debs").glob("containerd_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download containerd ({suite}) produced no .deb")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root / "root")], check=True)
    return str(binary)


def bin_dir(version: str) -> str:
    """The directory whose ctr and containerd-shim-runc-v2 match ``version``."""
    return str(Path(containerd_binary(version)).parent)


if __name__ == "__main__":
    print(containerd_binary(sys.argv[1] if len(sys.argv) > 1 else "1.6"))
