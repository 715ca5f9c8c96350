"""The node installer image, built offline: debootstrap bases and a buildah (vfs, no daemon) build, cached.

Everything expensive lives under ``/var/cache/pyoci/installer``: the debootstrap tarballs (``minbase``: the
image's runtime base and the scratch node's root, without Python; ``build``: minbase plus python3.11, pip
and libseccomp2), buildah's own storage (its layer cache keeps the interpreter stage, keyed on the base
image and pyproject.toml; the base images are named after the Debian package versions they hold).

    python -m integration.harness.installer build [CONTEXT]   builds localhost/pyoci-installer:latest
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from integration.harness.versions import _mirror

CACHE = Path(os.environ.get("PYOCI_CACHE", "/var/cache/pyoci")) / "installer"
REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BASES = {"minbase": (), "build": ("python3.11", "python3-pip", "libseccomp2", "ca-certificates")}
IMAGE = "localhost/pyoci-installer"
INTERPRETER = "localhost/pyoci-installer-interpreter:cache"  # the interpreter stage, tagged so prune keeps it


def buildah(*args: str, check: bool = True, capture: bool = True, timeout: float = 1800) -> str:
    storage = [f"--root={CACHE / 'storage'}", f"--runroot={CACHE / 'runroot'}", "--storage-driver=vfs"]
    proc = subprocess.run(
        ["buildah", *storage, *args], capture_output=capture, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return (proc.stdout or "").strip()


def base_tarball(name: str) -> Path:
    """``debootstrap --variant=minbase bookworm`` (+ the packages of ``name``) as a tarball, made once."""
    include = BASES[name]
    tar = CACHE / f"{name}-{SUITE}.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"debootstrap-{name}-", dir=CACHE))
    try:
        cmd = ["debootstrap", "--variant=minbase", *([f"--include={','.join(include)}"] if include else [])]
        proc = subprocess.run([*cmd, SUITE, str(root), _mirror()], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        pack(root, tar)
    finally:
        subprocess.run(["umount", "-R", str(root / "proc")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
    return tar


def pack(root: Path, tar: Path) -> None:
    """A debootstrap root as a tarball, without the downloaded .debs and apt lists (~80 MB)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
        for entry in root.glob(pattern):
            entry.unlink()
    partial = tar.with_suffix(".tar.partial")
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
    partial.rename(tar)


def package_versions(tar: Path) -> str:
    """A hash of the Debian package versions in a base tarball (its dpkg status)."""
    with tarfile.open(tar) as archive:
        status = archive.extractfile("./var/lib/dpkg/status")
        assert status is not None
        return hashlib.sha256(status.read()).hexdigest()[:12]


def base_image(name: str) -> str:
    """The base tarball as a local image, named after its package versions (imported once)."""
    tar = base_tarball(name)
    ref = f"localhost/pyoci-installer-base-{name}:{package_versions(tar)}"
    if buildah("images", "--quiet", ref, check=False):
        return ref
    container = buildah("from", "scratch")
    try:
        buildah("add", container, str(tar), "/")
        buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", container)
        buildah("commit", "--quiet", container, ref)
    finally:
        buildah("rm", container, check=False)
    return ref


@dataclass(frozen=True)
class Build:
    image: str
    seconds: float
    reused: bool  # an image built from the same files and bases existed


# what .dockerignore lets into the build context (an allowlist; keep the two in step)
CONTEXT = ("ttrpc", "protos", "runtime", "shim", "bin", "deploy", "pyproject.toml", "README.md")


def context_key(context: Path, *bases: str) -> str:
    """A hash of the Dockerfile, the context's files (as .dockerignore admits them) and the base images."""
    digest = hashlib.sha256("\0".join(bases).encode())
    paths = [context / "Dockerfile", context / ".dockerignore"]
    for name in CONTEXT:
        top = context / name
        paths += sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
    for path in paths:
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(f"{path.relative_to(context)}\0{os.stat(path).st_mode & 0o111}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_image(context: Path = REPO, tag: str = "latest") -> Build:
    """Build the Dockerfile of ``context`` with buildah (layers cached: the interpreter stage is rebuilt only
    when the base or pyproject.toml changes). pip inside the build reaches the package index through the
    host's network with the host's CA bundle and pip configuration mounted in."""
    started = time.monotonic()
    build_base, runtime_base = base_image("build"), base_image("minbase")
    keyed = f"{IMAGE}:ctx-{context_key(context, build_base, runtime_base)}"
    image = f"{IMAGE}:{tag}"
    if buildah("images", "--quiet", keyed, check=False):
        buildah("tag", keyed, image)
        return Build(image, time.monotonic() - started, reused=True)
    mounts = []
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if os.path.exists(path):
            mounts += ["--volume", f"{path}:{path}:ro"]
    output = buildah(
        "bud",
        "--layers",
        "--network=host",
        "--isolation=chroot",
        *mounts,
        f"--build-arg=BUILD_BASE={build_base}",
        f"--build-arg=RUNTIME_BASE={runtime_base}",
        "--tag",
        keyed,
        "--tag",
        image,
        "--file",
        str(context / "Dockerfile"),
        str(context),
    )
    interpreter = re.search(r"FROM ([0-9a-f]{64}) AS tree", output)
    if interpreter:
        buildah("tag", interpreter.group(1), INTERPRETER)
    prune(keep=buildah("images", "--quiet", "--no-trunc", keyed))
    return Build(image, time.monotonic() - started, reused=False)


def prune(keep: str, spare: int = 3) -> None:
    """Keep buildah's vfs storage bounded (each layer is a full copy of its rootfs, ~1.5 GB per build): once more
    than ``spare`` installer images of other checkouts piled up, remove them (and working containers left on
    them) and the layers only they used. The base images and the tagged interpreter stage stay, so the next
    build still hits the cache. Removing is slow on vfs (~30 s per old build), hence done in batches."""
    keep_id = keep.removeprefix("sha256:")
    listed = buildah("images", "--no-trunc", "--format", "{{.ID}} {{.Name}} {{.Tag}}", check=False)
    rows = [line.split() for line in listed.splitlines()]
    old = {r[0] for r in rows if len(r) >= 3 and r[1] == IMAGE and r[0].removeprefix("sha256:") != keep_id}
    if len(old) <= spare:
        return
    for image_id in sorted(old):
        buildah("rmi", "--force", image_id, check=False)
    buildah("rmi", "--prune", check=False)


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m integration.harness.installer build [CONTEXT]", file=sys.stderr)
        return 2
    result = build_image(Path(argv[1]) if len(argv) > 1 else REPO)
    print(f"{result.image} {'reused' if result.reused else 'built'} in {result.seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
