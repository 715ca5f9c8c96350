"""Stats: a container's cgroup :class:`Stats` as ``io.containerd.cgroups.v1.Metrics`` (v1 and hybrid hosts) or
``io.containerd.cgroups.v2.Metrics`` (unified hosts), the messages ``ctr t metrics`` and the CRI decode.

Figures a kernel does not have stay zero, as containerd's cgroups library leaves them.
"""

from __future__ import annotations

from pyoci.protos import cgroups_v1_metrics_pb2 as v1
from pyoci.protos import cgroups_v2_metrics_pb2 as v2
from pyoci.runtime.cgroups import Manager
from pyoci.runtime.cgroups.stats import UNLIMITED, MemoryData, Stats


def collect(cgroup: Manager) -> v1.Metrics | v2.Metrics:
    stats = cgroup.stats()
    return to_v2(stats) if cgroup.version == "v2" else to_v1(stats)


def _z(value: int | None) -> int:
    return value or 0


def _limit(value: int | None) -> int:
    """A pids limit: unlimited (and unknown) is 0."""
    return 0 if value in (None, UNLIMITED) else value


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


def to_v1(s: Stats) -> v1.Metrics:
    m = v1.Metrics()
    if s.memory:
        _v1_memory(m, s)
    if s.cpu:
        if s.cpu.usage:
            u = s.cpu.usage
            m.cpu.usage.total = _z(u.total_ns)
            m.cpu.usage.per_cpu.extend(u.per_cpu_ns)
            m.cpu.usage.user = _z(u.user_ns)
            m.cpu.usage.kernel = _z(u.system_ns)
        if s.cpu.throttling:
            t = s.cpu.throttling
            m.cpu.throttling.periods = t.periods
            m.cpu.throttling.throttled_periods = t.throttled_periods
            m.cpu.throttling.throttled_time = t.throttled_ns
    if s.pids:
        m.pids.current = _z(s.pids.current)
        m.pids.limit = _limit(s.pids.limit)
    if s.blkio:
        m.blkio.SetInParent()  # present when the controller is, even with no I/O yet (as containerd's cgroups does)
        for entries, field in (
            (s.blkio.service_bytes, "io_service_bytes_recursive"),
            (s.blkio.serviced, "io_serviced_recursive"),
        ):
            for e in entries:
                getattr(m.blkio, field).add(op=e.op, major=e.major, minor=e.minor, value=e.value)
    for h in s.hugetlb:
        m.hugetlb.add(pagesize=h.pagesize, usage=_z(h.usage), max=_z(h.max_usage), failcnt=_z(h.failcnt))
    return m


def _v1_memory(m: v1.Metrics, s: Stats) -> None:
    mem = s.memory
    stat = mem.stat
    for key, field in _V1_MEMORY_STAT.items():
        if key in stat:
            setattr(m.memory, field, stat[key])
        if "total_" + key in stat and hasattr(m.memory, "total_" + field):
            setattr(m.memory, "total_" + field, stat["total_" + key])
    for entry in ("usage", "swap", "kernel", "kernel_tcp"):
        data: MemoryData | None = getattr(mem, entry)
        if data is None:
            continue
        e = getattr(m.memory, entry)
        e.usage, e.limit, e.max, e.failcnt = _z(data.usage), _z(data.limit), _z(data.max), _z(data.failcnt)
    m.memory_oom_control.oom_kill_disable = mem.oom.get("oom_kill_disable", 0)
    m.memory_oom_control.under_oom = mem.oom.get("under_oom", 0)
    m.memory_oom_control.oom_kill = mem.oom.get("oom_kill", 0)


# ------------------------------------------------------------------------------------------------ v2

_V2_MEMORY_STAT = [f.name for f in v2.MemoryStat.DESCRIPTOR.fields if f.type != f.TYPE_MESSAGE]


def to_v2(s: Stats) -> v2.Metrics:
    m = v2.Metrics()
    if s.pids:
        m.pids.current = _z(s.pids.current)
        m.pids.limit = _limit(s.pids.limit)
    if s.cpu:
        u, t = s.cpu.usage, s.cpu.throttling
        m.cpu.usage_usec = _z(u and u.total_ns) // 1000
        m.cpu.user_usec = _z(u and u.user_ns) // 1000
        m.cpu.system_usec = _z(u and u.system_ns) // 1000
        m.cpu.nr_periods = t.periods if t else 0
        m.cpu.nr_throttled = t.throttled_periods if t else 0
        m.cpu.throttled_usec = t.throttled_ns // 1000 if t else 0
        m.cpu.nr_bursts = t.bursts if t else 0
        m.cpu.burst_usec = t.burst_ns // 1000 if t else 0
    if s.memory:
        _v2_memory(m, s)
    for d in s.blkio.devices if s.blkio else []:
        m.io.usage.add(major=d.device[0], minor=d.device[1], rbytes=d.rbytes, wbytes=d.wbytes, rios=d.rios, wios=d.wios)
    for h in s.hugetlb:
        m.hugetlb.add(pagesize=h.pagesize, current=_z(h.usage), max=_z(h.limit))
    return m


def _v2_memory(m: v2.Metrics, s: Stats) -> None:
    mem = s.memory
    for field in _V2_MEMORY_STAT:
        if field in mem.stat:
            setattr(m.memory, field, mem.stat[field])
    usage, swap = mem.usage or MemoryData(), mem.swap or MemoryData()
    m.memory.usage = _z(usage.usage)
    m.memory.usage_limit = _z(usage.limit)
    m.memory.max_usage = _z(usage.max)
    m.memory.swap_usage = _z(swap.usage)
    m.memory.swap_limit = _z(swap.limit)
    for field in ("low", "high", "max", "oom", "oom_kill", "oom_group_kill"):
        setattr(m.memory_events, field, mem.oom.get(field, 0))
