"""A busybox OCI image built offline and reproducibly from Debian's ``busybox-static``.

The result is an OCI image layout tar (``ctr images import`` reads it): one uncompressed layer with
/bin/busybox, a symlink per applet at the path busybox reports, /etc/passwd and /etc/group. Every tar
entry has mtime 0 and owner root, so the same busybox gives the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import tarfile
from pathlib import Path

IMAGE_NAME = "docker.io/pyoci/busybox:latest"
BUSYBOX = Path("/bin/busybox")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x"}
_DIRS = {
    "bin": 0o755,
    "dev": 0o755,
    "etc": 0o755,
    "proc": 0o555,
    "root": 0o700,
    "run": 0o755,
    "sbin": 0o755,
    "sys": 0o555,
    "tmp": 0o1777,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "var": 0o755,
}
_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": b"busybox\n",
}


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _layer(busybox: Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    binary = busybox.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, mode in _DIRS.items():
        entries.append((_info(name, tarfile.DIRTYPE, mode), None))
    entries.append((_info("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), binary))
    for path in sorted(set(applets.split())):
        if path != "bin/busybox":
            entries.append((_info(path, tarfile.SYMTYPE, 0o777, link="/bin/busybox"), None))
    for name, data in _FILES.items():
        entries.append((_info(name, tarfile.REGTYPE, 0o644, len(data)), data))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in sorted(entries, key=lambda e: e[0].name):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    tar.addfile(_info("blobs/sha256/" + digest[7:], tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_busybox_image(dest: Path, busybox: Path = BUSYBOX, name: str = IMAGE_NAME) -> Path:
    """Write the OCI layout tar to ``dest`` and return it."""
    return write_image(
        dest,
        _layer(busybox),
        {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
    )


def write_image(dest: Path, layer: bytes, image_config: dict, annotations: dict[str, str]) -> Path:
    """An OCI image layout tar of one layer (for ``ctr images import``), named by ``annotations``."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        layer_desc = _blob(tar, layer)
        config_desc = _blob(tar, _json(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
        }
        manifest_desc = _blob(tar, _json(manifest))
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_desc,
                    "platform": {"architecture": arch, "os": "linux"},
                    "annotations": annotations,
                }
            ],
        }
        for fname, data in (
            ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
            ("index.json", _json(index)),
        ):
            tar.addfile(_info(fname, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return dest


def rootfs_from_image(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Unpack the same layer into ``dest`` (a bundle rootfs for runtime tests without containerd)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_layer(busybox))) as tar:
        tar.extractall(dest, filter="fully_trusted")
    return dest
