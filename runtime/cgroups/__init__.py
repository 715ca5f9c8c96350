"""cgroup managers: v1, v2, and hybrid (v1 controllers + a cgroup2 mount), behind one interface.

``open_cgroup(path)`` looks at the host's cgroup mounts once and returns the right manager for a
container's ``cgroupsPath``. Managers create the cgroup, place processes in it, apply resources, list,
freeze and kill its processes, and remove it; they tell their ``version``, their freezer state, their
:class:`Stats` and where their OOM kills are counted. They raise :class:`CgroupError` naming the file at fault.
"""

from __future__ import annotations

from .base import CgroupError, Manager
from .layout import Layout, detect_layout
from .stats import FreezerState, OOMSource, Stats


def open_cgroup(cgroups_path: str, container_id: str, layout: Layout | None = None) -> Manager:
    """The manager for a container's cgroup. ``cgroups_path`` empty → ``/pyoci/<id>``; a relative
    path is taken relative to this process's own cgroup, as runc does; a ``slice:prefix:name`` path (what
    containerd passes with ``SystemdCgroup = true``, and what ``--systemd-cgroup`` records) selects the systemd
    driver."""
    from .systemd import SystemdManager, is_systemd_path
    from .v1 import V1Manager
    from .v2 import V2Manager

    layout = layout or detect_layout()
    path = cgroups_path or f"/pyoci/{container_id}"
    if is_systemd_path(path):
        return SystemdManager(path, layout)
    if layout.mode == "unified":
        return V2Manager(layout.resolve_v2(path))
    unified = layout.resolve_v2(path) if layout.unified_mount else None
    return V1Manager(layout.resolve_v1(path), unified=V2Manager(unified) if unified else None)


__all__ = ["CgroupError", "FreezerState", "Layout", "Manager", "OOMSource", "Stats", "detect_layout", "open_cgroup"]
