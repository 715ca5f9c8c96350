"""Plain figures read from a container's cgroup (``pyoci events --stats``); the shim encodes its own
protobuf metrics from the same files."""

from __future__ import annotations

import os

from .cgroups import Manager
from .cgroups.base import read_kv


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return None if text == "max" else int(text)


def cgroup_stats(cgroup: Manager) -> dict:
    paths = cgroup.paths()
    out: dict = {}
    if "" in paths and "memory" not in paths:  # cgroup v2
        d = paths[""]
        out["memory"] = {
            "usage": {"usage": _read_int(f"{d}/memory.current"), "limit": _read_int(f"{d}/memory.max")},
            "raw": read_kv(f"{d}/memory.stat"),
        }
        out["cpu"] = {"usage": read_kv(f"{d}/cpu.stat")}
        out["pids"] = {"current": _read_int(f"{d}/pids.current"), "limit": _read_int(f"{d}/pids.max")}
        return out
    if "memory" in paths:
        d = paths["memory"]
        out["memory"] = {
            "usage": {
                "usage": _read_int(f"{d}/memory.usage_in_bytes"),
                "limit": _read_int(f"{d}/memory.limit_in_bytes"),
                "max": _read_int(f"{d}/memory.max_usage_in_bytes"),
                "failcnt": _read_int(f"{d}/memory.failcnt"),
            },
            "raw": read_kv(f"{d}/memory.stat"),
        }
    if "cpuacct" in paths:
        out["cpu"] = {"usage": {"total": _read_int(os.path.join(paths["cpuacct"], "cpuacct.usage"))}}
    if "pids" in paths:
        d = paths["pids"]
        out["pids"] = {"current": _read_int(f"{d}/pids.current"), "limit": _read_int(f"{d}/pids.max")}
    return out
