"""OCI bundles for runtime tests: the busybox rootfs plus a config made from ``pyoci spec``'s default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyoci.runtime import procfs
from pyoci.runtime.features import default_spec

from .containerd import mounts_under
from .image import rootfs_from_image

PYOCI = str(Path(sys.executable).parent / "pyoci")


@dataclass
class Bundle:
    path: Path
    root: Path  # the runtime's --root
    id: str
    config: dict

    @property
    def cgroups_path(self) -> str:
        return self.config["linux"]["cgroupsPath"]

    def write(self) -> Bundle:
        (self.path / "config.json").write_text(json.dumps(self.config))
        return self

    def pyoci(self, *args: str, timeout: float = 30, check: bool = False, **kw) -> subprocess.CompletedProcess:
        # Files, not pipes: a created or detached container inherits the runtime's stdio (as with runc),
        # and a pipe would keep us waiting for EOF until the container exits.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            code = subprocess.run(
                [PYOCI, "--root", str(self.root), *args], stdout=out, stderr=err, timeout=timeout, **kw
            ).returncode
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(args, code, out.read().decode(), err.read().decode())
        if check and result.returncode != 0:
            raise AssertionError(f"pyoci {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def leftovers(self) -> list[str]:
        """State dirs, cgroup leaves and mounts this bundle's container left behind."""
        found = []
        if (self.root / self.id).exists():
            found.append(f"state dir {self.root / self.id}")
        for mount in _cgroup_mounts():
            leaf = Path(mount + self.cgroups_path)
            if leaf.exists():
                found.append(f"cgroup {leaf}")
        found += [f"mount {m}" for m in mounts_under(self.path)]
        return found


def _cgroup_mounts() -> list[str]:
    return [m.mount_point for m in procfs.mounts() if m.fs_type in ("cgroup", "cgroup2")]


def make_bundle(base: Path, container_id: str, args: list[str]) -> Bundle:
    base.mkdir(parents=True, exist_ok=True)
    rootfs_from_image(base / "rootfs")
    config = default_spec()
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"]["readonly"] = False
    config["linux"]["cgroupsPath"] = f"/pyoci-it-runtime/{container_id}"
    root = base / "state"
    return Bundle(base, root, container_id, config).write()


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
