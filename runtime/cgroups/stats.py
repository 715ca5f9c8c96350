"""What a cgroup reports, as typed figures (runc's ``cgroups.Stats``): managers fill it, the shim and CLI encode it.

A figure the kernel does not offer is ``None`` (a section whose controller is absent is ``None`` too); a limit
the kernel writes as ``max`` is :data:`UNLIMITED`. Times are nanoseconds whichever the cgroup version.
"""

from __future__ import annotations

from dataclasses import field
from enum import Enum

from ..records import mutable_record, record

UNLIMITED = 2**64 - 1  # "max" in a cgroup file (what containerd's cgroups library reports for it)


class FreezerState(Enum):
    THAWED = "THAWED"
    FREEZING = "FREEZING"
    FROZEN = "FROZEN"


@record
class OOMSource:
    """Where the OOM-kill counter lives and how the kernel signals a change to it."""

    counter_file: str  # memory.oom_control (v1) or memory.events (v2): its ``oom_kill`` line counts kills
    event_control: str | None = None  # v1: cgroup.event_control, to register an eventfd; v2: None (inotify)


@mutable_record
class CpuUsage:
    total_ns: int | None = None
    user_ns: int | None = None
    system_ns: int | None = None
    per_cpu_ns: list[int] = field(default_factory=list)


@mutable_record
class Throttling:
    periods: int = 0
    throttled_periods: int = 0
    throttled_ns: int = 0
    bursts: int = 0
    burst_ns: int = 0


@mutable_record
class CpuStats:
    usage: CpuUsage | None = None  # v1: cpuacct; v2: cpu.stat
    throttling: Throttling | None = None  # v1: the cpu controller's cpu.stat; v2: cpu.stat
    stat: dict[str, int] = field(default_factory=dict)  # cpu.stat as the kernel names it


@mutable_record
class MemoryData:
    usage: int | None = None
    limit: int | None = None
    max: int | None = None  # the peak (v1 max_usage_in_bytes, v2 memory.peak)
    failcnt: int | None = None


@mutable_record
class MemoryStats:
    usage: MemoryData | None = None
    swap: MemoryData | None = None  # v1: memory+swap (memsw); v2: swap alone
    kernel: MemoryData | None = None  # v1 only (kmem)
    kernel_tcp: MemoryData | None = None  # v1 only (kmem.tcp)
    stat: dict[str, int] = field(default_factory=dict)  # memory.stat as the kernel names it
    oom: dict[str, int] = field(default_factory=dict)  # memory.oom_control (v1) or memory.events (v2)


@mutable_record
class PidsStats:
    current: int | None = None
    limit: int | None = None


@mutable_record
class BlkioEntry:
    op: str
    major: int
    minor: int
    value: int


@mutable_record
class IoUsage:
    device: tuple[int, int]  # major, minor
    rbytes: int
    wbytes: int
    rios: int
    wios: int


@mutable_record
class BlkioStats:
    """v1: the blkio.throttle.*_recursive lines; v2: io.stat, one entry per device."""

    service_bytes: list[BlkioEntry] = field(default_factory=list)
    serviced: list[BlkioEntry] = field(default_factory=list)
    devices: list[IoUsage] = field(default_factory=list)


@mutable_record
class HugetlbStats:
    pagesize: str
    usage: int | None = None
    max_usage: int | None = None  # v1 only
    failcnt: int | None = None  # v1 only
    limit: int | None = None


@mutable_record
class Stats:
    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    pids: PidsStats | None = None
    blkio: BlkioStats | None = None
    hugetlb: list[HugetlbStats] = field(default_factory=list)


def read_text(path: str) -> str:
    """A cgroup file's text; "" if it is absent or unreadable."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def read_int(path: str) -> int | None:
    """A one-number cgroup file: ``max`` → UNLIMITED; absent, empty or not a number → None."""
    text = read_text(path).strip()
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def events_data(stats: Stats, version: str) -> dict:
    """The ``data`` of ``pyoci events --stats``: unlimited and absent figures are null."""

    def n(value: int | None) -> int | None:
        return None if value == UNLIMITED else value

    out: dict = {}
    memory, cpu, pids = stats.memory, stats.cpu, stats.pids
    if version == "v2":
        usage = memory.usage if memory and memory.usage else MemoryData()
        out["memory"] = {
            "usage": {"usage": n(usage.usage), "limit": n(usage.limit)},
            "raw": memory.stat if memory else {},
        }
        out["cpu"] = {"usage": cpu.stat if cpu else {}}
        out["pids"] = {"current": n(pids.current), "limit": n(pids.limit)} if pids else {"current": None, "limit": None}
        return out
    if memory:
        usage = memory.usage or MemoryData()
        out["memory"] = {
            "usage": {
                "usage": n(usage.usage),
                "limit": n(usage.limit),
                "max": n(usage.max),
                "failcnt": n(usage.failcnt),
            },
            "raw": memory.stat,
        }
    if cpu and cpu.usage:
        out["cpu"] = {"usage": {"total": n(cpu.usage.total_ns)}}
    if pids:
        out["pids"] = {"current": n(pids.current), "limit": n(pids.limit)}
    return out
