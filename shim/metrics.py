"""Stats: a container's cgroup files as ``io.containerd.cgroups.v1.Metrics`` (v1 and hybrid hosts) or
``io.containerd.cgroups.v2.Metrics`` (unified hosts), the messages ``ctr t metrics`` and the CRI decode.

Files a kernel does not have are skipped (their fields stay zero), as containerd's cgroups library does.
"""

from __future__ import annotations

import os

from pyoci.protos import cgroups_v1_metrics_pb2 as v1
from pyoci.protos import cgroups_v2_metrics_pb2 as v2
from pyoci.runtime.cgroups import Manager
from pyoci.runtime.cgroups.base import read_kv

MAX = 2**64 - 1
_TICKS = os.sysconf("SC_CLK_TCK")


def _text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _int(path: str) -> int:
    text = _text(path).strip()
    if not text:
        return 0
    if text == "max":
        return MAX
    try:
        return int(text)
    except ValueError:
        return 0


def collect(cgroup: Manager):
    paths = cgroup.paths()
    if "memory" in paths or "cpuacct" in paths or "pids" in paths:
        return collect_v1(paths)
    return collect_v2(paths[""])


# ------------------------------------------------------------------------------------------------ v1

_V1_MEMORY_STAT = {
    "cache": "cache",
    "rss": "rss",
    "rss_huge": "rss_huge",
    "mapped_file": "mapped_file",
    "dirty": "dirty",
    "writeback": "writeback",
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}


def collect_v1(paths: dict[str, str]) -> v1.Metrics:
    m = v1.Metrics()
    if "memory" in paths:
        _v1_memory(m, paths["memory"])
    if "cpuacct" in paths or "cpu" in paths:
        _v1_cpu(m, paths.get("cpuacct", ""), paths.get("cpu", ""))
    if "pids" in paths:
        m.pids.current = _int(f"{paths['pids']}/pids.current")
        m.pids.limit = 0 if _text(f"{paths['pids']}/pids.max").strip() == "max" else _int(f"{paths['pids']}/pids.max")
    if "blkio" in paths:
        _v1_blkio(m, paths["blkio"])
    hugetlb = paths.get("hugetlb")
    if hugetlb:
        for name in sorted(os.listdir(hugetlb)):
            if name.startswith("hugetlb.") and name.endswith(".limit_in_bytes"):
                size = name.split(".")[1]
                m.hugetlb.add(
                    pagesize=size,
                    usage=_int(f"{hugetlb}/hugetlb.{size}.usage_in_bytes"),
                    max=_int(f"{hugetlb}/hugetlb.{size}.max_usage_in_bytes"),
                    failcnt=_int(f"{hugetlb}/hugetlb.{size}.failcnt"),
                )
    return m


def _v1_memory(m: v1.Metrics, d: str) -> None:
    stat = read_kv(f"{d}/memory.stat")
    for key, field in _V1_MEMORY_STAT.items():
        if key in stat:
            setattr(m.memory, field, stat[key])
        if "total_" + key in stat and hasattr(m.memory, "total_" + field):
            setattr(m.memory, "total_" + field, stat["total_" + key])
    for entry, prefix in (
        ("usage", "memory"),
        ("swap", "memory.memsw"),
        ("kernel", "memory.kmem"),
        ("kernel_tcp", "memory.kmem.tcp"),
    ):
        if not os.path.exists(f"{d}/{prefix}.usage_in_bytes"):
            continue
        e = getattr(m.memory, entry)
        e.usage = _int(f"{d}/{prefix}.usage_in_bytes")
        e.limit = _int(f"{d}/{prefix}.limit_in_bytes")
        e.max = _int(f"{d}/{prefix}.max_usage_in_bytes")
        e.failcnt = _int(f"{d}/{prefix}.failcnt")
    oom = read_kv(f"{d}/memory.oom_control")
    m.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
    m.memory_oom_control.under_oom = oom.get("under_oom", 0)
    m.memory_oom_control.oom_kill = oom.get("oom_kill", 0)


def _v1_cpu(m: v1.Metrics, cpuacct: str, cpu: str) -> None:
    if cpuacct:
        m.cpu.usage.total = _int(f"{cpuacct}/cpuacct.usage")
        m.cpu.usage.per_cpu.extend(int(x) for x in _text(f"{cpuacct}/cpuacct.usage_percpu").split())
        stat = read_kv(f"{cpuacct}/cpuacct.stat")
        m.cpu.usage.user = stat.get("user", 0) * 10**9 // _TICKS
        m.cpu.usage.kernel = stat.get("system", 0) * 10**9 // _TICKS
    if cpu:
        stat = read_kv(f"{cpu}/cpu.stat")
        m.cpu.throttling.periods = stat.get("nr_periods", 0)
        m.cpu.throttling.throttled_periods = stat.get("nr_throttled", 0)
        m.cpu.throttling.throttled_time = stat.get("throttled_time", 0)


def _v1_blkio(m: v1.Metrics, d: str) -> None:
    m.blkio.SetInParent()  # present when the controller is, even with no I/O yet (as containerd's cgroups does)
    for field, name in (
        ("io_service_bytes_recursive", "blkio.throttle.io_service_bytes_recursive"),
        ("io_serviced_recursive", "blkio.throttle.io_serviced_recursive"),
    ):
        entries = getattr(m.blkio, field)
        for line in _text(f"{d}/{name}").splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                major, minor = parts[0].split(":")
                entries.add(op=parts[1], major=int(major), minor=int(minor), value=int(parts[2]))


# ------------------------------------------------------------------------------------------------ v2

_V2_MEMORY_STAT = [f.name for f in v2.MemoryStat.DESCRIPTOR.fields if f.type != f.TYPE_MESSAGE]


def collect_v2(d: str) -> v2.Metrics:
    m = v2.Metrics()
    m.pids.current = _int(f"{d}/pids.current")
    m.pids.limit = 0 if _text(f"{d}/pids.max").strip() in ("max", "") else _int(f"{d}/pids.max")
    cpu = read_kv(f"{d}/cpu.stat")
    for field in (
        "usage_usec",
        "user_usec",
        "system_usec",
        "nr_periods",
        "nr_throttled",
        "throttled_usec",
        "nr_bursts",
        "burst_usec",
    ):
        setattr(m.cpu, field, cpu.get(field, 0))
    stat = read_kv(f"{d}/memory.stat")
    for field in _V2_MEMORY_STAT:
        if field in stat:
            setattr(m.memory, field, stat[field])
    m.memory.usage = _int(f"{d}/memory.current")
    m.memory.usage_limit = _int(f"{d}/memory.max")
    m.memory.max_usage = _int(f"{d}/memory.peak")
    m.memory.swap_usage = _int(f"{d}/memory.swap.current")
    m.memory.swap_limit = _int(f"{d}/memory.swap.max")
    events = read_kv(f"{d}/memory.events")
    for field in ("low", "high", "max", "oom", "oom_kill", "oom_group_kill"):
        setattr(m.memory_events, field, events.get(field, 0))
    for line in _text(f"{d}/io.stat").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = parts[0].split(":")
        values = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        m.io.usage.add(
            major=int(major),
            minor=int(minor),
            rbytes=int(values.get("rbytes", 0)),
            wbytes=int(values.get("wbytes", 0)),
            rios=int(values.get("rios", 0)),
            wios=int(values.get("wios", 0)),
        )
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if name.startswith("hugetlb.") and name.endswith(".max") and name.count(".") == 2:
            size = name.split(".")[1]
            m.hugetlb.add(pagesize=size, current=_int(f"{d}/hugetlb.{size}.current"), max=_int(f"{d}/{name}"))
    return m
