"""What the host sees of a pod: namespaces, cgroups, bridge ports, netns mounts, process ancestry."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pyoci.runtime import procfs


def ns_id(pid: int | str, kind: str) -> str:
    """``net:[4026531840]``-style identity of a process's namespace (``pid`` may be "self")."""
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise ValueError(f"no PPid in /proc/{pid}/status")


def ancestors(pid: int) -> list[int]:
    chain = []
    with contextlib.suppress(OSError, ValueError):
        while pid > 1:
            pid = parent_pid(pid)
            chain.append(pid)
    return chain


def alive(pid: int) -> bool:
    return procfs.process_state(pid) not in ("", "Z")


def cgroup_mounts() -> dict[str, Path]:
    """Hierarchy name ("memory", "cpu,cpuacct", "unified", ...) → mount point, for every cgroup mount."""
    found: dict[str, Path] = {}
    for m in procfs.mounts():
        if m.fs_type == "cgroup2":
            found.setdefault("unified", Path(m.mount_point))
        elif m.fs_type == "cgroup":
            names = [o for o in m.super_options.split(",") if o not in ("rw", "ro")]
            found.setdefault(",".join(names), Path(m.mount_point))
    return found


def cgroup_dirs(path: str) -> list[Path]:
    """The directories of cgroup ``path`` (e.g. "/pyoci-cri-1/pod-x/<id>") that exist in any hierarchy."""
    return [m / path.lstrip("/") for m in cgroup_mounts().values() if (m / path.lstrip("/")).is_dir()]


def cgroup_file(controller: str, path: str, v1_name: str, v2_name: str) -> str:
    """Read a controller file of cgroup ``path``: the v1 hierarchy when the controller has one, else v2."""
    mounts = cgroup_mounts()
    v1 = next((m for names, m in mounts.items() if controller in names.split(",")), None)
    target = v1 / path.lstrip("/") / v1_name if v1 else mounts["unified"] / path.lstrip("/") / v2_name
    return target.read_text().strip()


def remove_cgroup_tree(path: str) -> list[str]:
    """rmdir ``path`` and its (empty) children in every hierarchy; returns what could not be removed."""
    failed = []
    for top in cgroup_dirs(path):
        subdirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for sub in [*subdirs, top]:
            try:
                sub.rmdir()
            except OSError as e:
                failed.append(f"{sub}: {e.strerror}")
    return failed


def bridge_ports(bridge: str) -> list[str]:
    brif = Path(f"/sys/class/net/{bridge}/brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def nsfs_mounts_under(prefix: str) -> list[str]:
    return [m.mount_point for m in procfs.mounts() if m.fs_type == "nsfs" and m.mount_point.startswith(prefix)]


def processes_in_cgroup(path: str) -> list[int]:
    pids: set[int] = set()
    for directory in cgroup_dirs(path):
        for procs in [directory / "cgroup.procs", *directory.rglob("*/cgroup.procs")]:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)
