"""Where this host keeps its cgroups: v1 hierarchies, a cgroup2 mount, or both (hybrid)."""

from __future__ import annotations

import os
from dataclasses import field
from functools import cache

from ..procfs import mounts
from ..records import record
from .base import CgroupError


@record
class Layout:
    mode: str  # "unified" (v2 only), "legacy" (v1 only) or "hybrid" (v1 controllers + a cgroup2 mount)
    v1_mounts: dict[str, str] = field(default_factory=dict)  # subsystem (or name=X) → mount point
    unified_mount: str = ""
    own: dict[str, str] = field(default_factory=dict)  # subsystem ("" for v2) → this process's cgroup

    def resolve_v1(self, path: str) -> dict[str, str]:
        """Subsystem → directory of ``path`` in each v1 hierarchy (co-mounted ones share a directory)."""
        return {ss: self._join(mount, ss, path) for ss, mount in self.v1_mounts.items()}

    def resolve_v2(self, path: str) -> str:
        return self._join(self.unified_mount, "", path)

    def _join(self, mount: str, subsystem: str, path: str) -> str:
        if not path.startswith("/"):
            path = self.own.get(subsystem, "/").rstrip("/") + "/" + path
        full = os.path.normpath(mount + "/" + path)
        if not (full + "/").startswith(mount.rstrip("/") + "/"):
            raise CgroupError(f"cgroupsPath {path!r} escapes the cgroup mount {mount}")
        return full


@cache
def detect_layout() -> Layout:
    v1: dict[str, str] = {}
    unified = ""
    for mount in mounts():
        if mount.fs_type == "cgroup2" and not unified:
            unified = mount.mount_point
        elif mount.fs_type == "cgroup":
            for opt in mount.super_options.split(","):
                if opt in _V1_SUBSYSTEMS or opt.startswith("name="):
                    v1.setdefault(opt, mount.mount_point)
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for ss in controllers.split(",") if controllers else [""]:
                own[ss] = path
    if not v1 and unified:
        return Layout("unified", {}, unified, own)
    if not v1:
        raise CgroupError("no cgroup filesystem is mounted")
    return Layout("hybrid" if unified else "legacy", v1, unified, own)


_V1_SUBSYSTEMS = frozenset(
    "cpu cpuacct cpuset memory devices freezer blkio pids hugetlb net_cls net_prio perf_event rdma misc".split()
)
