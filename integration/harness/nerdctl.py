"""nerdctl binaries for the scenario suite: built from the Go module proxy's source, cached outside the repo.

The proxy serves nerdctl v2.1.3 and v1.7.7 (not the version list, so ``go install …@v`` fails): the exact
version is fetched with ``go mod download``, copied to a writable directory and built with ``go build
./cmd/nerdctl``. nerdctl v2's go.mod names a test-only module (``mod/tigron``, a nested module the proxy
lacks): its requirement is dropped, and so is the one test helper on the binary's import path that pulls it
in (``cmd/nerdctl/helpers/testing_linux.go``). Builds take a file lock, so parallel sessions build once.

    python -m integration.harness.nerdctl [VERSION ...]   builds what is missing and prints the paths
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from integration.harness.golang import go_env
from integration.harness.versions import CACHE

GO = os.environ.get("PYOCI_GO", "/usr/local/go/bin/go")
ROOT = CACHE / "nerdctl"


@dataclass(frozen=True)
class Release:
    version: str
    module: str
    drop_requires: tuple[str, ...] = ()
    drop_files: tuple[str, ...] = ()

    @property
    def binary(self) -> Path:
        return ROOT / self.version / "nerdctl"


RELEASES = {
    r.version: r
    for r in (
        Release(
            "v2.1.3",
            "github.com/containerd/nerdctl/v2",
            drop_requires=("github.com/containerd/nerdctl/mod/tigron",),
            drop_files=("cmd/nerdctl/helpers/testing_linux.go",),
        ),
        Release("v1.7.7", "github.com/containerd/nerdctl"),
    )
}
VERSIONS = tuple(RELEASES)


def _go_env() -> dict[str, str]:
    return go_env(ROOT, "-modcacherw -buildvcs=false", CGO_ENABLED="0")


def _go(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run([GO, *args], cwd=cwd, env=_go_env(), capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]  # go mod download -json reports its error on stdout
        raise RuntimeError(f"go {' '.join(args)} failed ({result.returncode}):\n{output}")
    return result.stdout


def _build(release: Release) -> None:
    info = json.loads(_go("mod", "download", "-json", f"{release.module}@{release.version}"))
    if info.get("Error"):
        raise RuntimeError(f"go mod download {release.module}@{release.version}: {info['Error']}")
    release.binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=release.binary.parent) as work:
        src = Path(work) / "src"
        shutil.copytree(info["Dir"], src)
        for path in [src, *src.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        for module in release.drop_requires:
            _go("mod", "edit", f"-droprequire={module}", f"-dropreplace={module}", cwd=src)
        for name in release.drop_files:
            (src / name).unlink()
        package = release.module + "/pkg/version"
        ldflags = f"-s -w -X {package}.Version={release.version} -X {package}.Revision=proxy-{release.version}"
        out = Path(work) / "nerdctl"
        _go("build", "-ldflags", ldflags, "-o", str(out), "./cmd/nerdctl", cwd=src)
        os.replace(out, release.binary)  # same filesystem: others see no binary or a whole one


def nerdctl_binary(version: str) -> Path:
    """The cached nerdctl of ``version`` (a key of RELEASES), built first if it is not there."""
    release = RELEASES.get(version)
    if release is None:
        raise ValueError(f"unknown nerdctl version {version!r} (known: {', '.join(RELEASES)})")
    if release.binary.exists():
        return release.binary
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiter finds the binary built
        if not release.binary.exists():
            _build(release)
    return release.binary


def main(argv: list[str]) -> int:
    for version in argv or VERSIONS:
        started = time.monotonic()
        path = nerdctl_binary(version)
        print(f"{version}: {path} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
