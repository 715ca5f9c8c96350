"""cgroup v1: one directory per hierarchy; on hybrid hosts the cgroup2 mount is joined too."""

from __future__ import annotations

import errno
import os
import time

from ..spec import CPU, BlockIO, Memory, Resources
from . import stats as st
from .base import CgroupError, Manager, hugetlb_sizes, read, read_kv, read_pids, remove_dir, throttles, write
from .v2 import V2Manager

_TICKS = os.sysconf("SC_CLK_TCK")

# Devices every container may use, whatever its rules say (runc's AllowedDevices).
DEFAULT_ALLOWED_DEVICES = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:8 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 1:5 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
)


class V1Manager(Manager):
    def __init__(self, paths: dict[str, str], unified: V2Manager | None = None) -> None:
        self._paths = paths
        self._unified = unified

    @property
    def version(self) -> str:
        return "hybrid" if self._unified else "v1"

    def paths(self) -> dict[str, str]:
        out = dict(self._paths)
        if self._unified:
            out[""] = self._unified.path
        return out

    def _dirs(self) -> list[str]:
        return sorted(set(self._paths.values()))

    def _file(self, subsystem: str, name: str) -> str | None:
        base = self._paths.get(subsystem)
        return f"{base}/{name}" if base else None

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._dirs()) or bool(self._unified and self._unified.exists())

    def create(self) -> None:
        for d in self._dirs():
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cgroup: mkdir {d}: {exc.strerror}") from None
        if "cpuset" in self._paths:
            _init_cpuset(self._paths["cpuset"])
        if self._unified:
            self._unified.create()

    def add(self, pid: int, *, unified: bool = True) -> None:
        for d in self._dirs():
            write(f"{d}/cgroup.procs", str(pid))
        if self._unified and unified:
            self._unified.add(pid)

    def clone_target(self) -> str | None:
        return self._unified.path if self._unified else None

    def pids(self) -> list[int]:
        base = self._paths.get("pids") or self._paths.get("memory") or self._dirs()[0]
        found: list[int] = []
        for root, _dirs, _files in os.walk(base):
            found += read_pids(f"{root}/cgroup.procs")
        return found

    def freeze(self) -> None:
        path = self._require("freezer", "freezer.state", "pause")
        write(path, "FROZEN")
        for _ in range(1000):
            if read(path).strip() == "FROZEN":
                return
            time.sleep(0.001)
            write(path, "FROZEN")
        raise CgroupError(f"cgroup: {path} did not reach FROZEN")

    def thaw(self) -> None:
        write(self._require("freezer", "freezer.state", "resume"), "THAWED")

    def freezer_state(self) -> st.FreezerState:
        path = self._file("freezer", "freezer.state")
        try:
            text = read(path).strip() if path else ""
        except FileNotFoundError:
            text = ""
        return st.FreezerState(text) if text in ("FROZEN", "FREEZING") else st.FreezerState.THAWED

    def oom_source(self) -> st.OOMSource | None:
        memcg = self._paths.get("memory")
        if memcg:
            return st.OOMSource(f"{memcg}/memory.oom_control", event_control=f"{memcg}/cgroup.event_control")
        return self._unified.oom_source() if self._unified else None

    def stats(self) -> st.Stats:
        p = self._paths
        return st.Stats(
            cpu=_cpu_stats(p.get("cpuacct"), p.get("cpu")),
            memory=_memory_stats(p["memory"]) if "memory" in p else None,
            pids=st.PidsStats(st.read_int(f"{p['pids']}/pids.current"), st.read_int(f"{p['pids']}/pids.max"))
            if "pids" in p
            else None,
            blkio=_blkio_stats(p["blkio"]) if "blkio" in p else None,
            hugetlb=[
                st.HugetlbStats(
                    pagesize=size,
                    usage=st.read_int(f"{p['hugetlb']}/hugetlb.{size}.usage_in_bytes"),
                    max_usage=st.read_int(f"{p['hugetlb']}/hugetlb.{size}.max_usage_in_bytes"),
                    failcnt=st.read_int(f"{p['hugetlb']}/hugetlb.{size}.failcnt"),
                    limit=st.read_int(f"{p['hugetlb']}/{name}"),
                )
                for name, size in (hugetlb_sizes(p["hugetlb"], ".limit_in_bytes") if p.get("hugetlb") else [])
            ],
        )

    def destroy(self) -> None:
        for d in self._dirs():
            for root, _dirs, _files in sorted(os.walk(d), key=lambda e: -len(e[0])):
                remove_dir(root)
        if self._unified:
            self._unified.destroy()

    def _require(self, subsystem: str, name: str, what: str) -> str:
        path = self._file(subsystem, name)
        if path is None:
            raise CgroupError(f"cgroup: {what} needs the {subsystem} controller, which is not mounted")
        return path

    # ------------------------------------------------------------------------------------ resources

    def apply(self, resources: Resources | None, *, update: bool = False) -> list[str]:
        warnings: list[str] = []
        if resources is None:
            if not update:
                self._devices(())
            return warnings
        if resources.unified:
            raise CgroupError("linux.resources.unified: needs a cgroup v2 host (this host's controllers are v1)")
        if resources.memory:
            warnings += self._memory(resources.memory)
        if resources.cpu:
            self._cpu(resources.cpu)
        if resources.pids_limit:  # runc: 0 leaves pids.max alone, a negative limit is "max"
            limit = resources.pids_limit
            self._set("pids", "pids.max", str(limit) if limit > 0 else "max", "linux.resources.pids")
        if resources.block_io:
            self._blkio(resources.block_io)
        for hp in resources.hugepage_limits:
            if "hugetlb" in self._paths:
                self._set("hugetlb", f"hugetlb.{hp.page_size}.limit_in_bytes", str(hp.limit), "hugepageLimits")
            elif self._unified:
                self._unified.set_hugetlb(hp.page_size, hp.limit)
            else:
                raise CgroupError("linux.resources.hugepageLimits: no hugetlb controller on this host")
        if not update or resources.devices:
            self._devices(resources.devices)
        return warnings

    def _set(self, subsystem: str, name: str, value: str, field: str) -> None:
        path = self._file(subsystem, name)
        if path is None:
            raise CgroupError(f"{field}: the {subsystem} controller is not mounted on this host")
        if not os.path.exists(path):
            raise CgroupError(f"{field}: {name} is not supported by this kernel ({path} does not exist)")
        write(path, value)

    def _cpu(self, c: CPU) -> None:
        """runc's rules: 0 means "not set" for shares, quota, period and the realtime pair (clients such as
        nerdctl v2 always send zeros)."""
        field = "linux.resources.cpu"
        if c.shares:
            self._set("cpu", "cpu.shares", str(c.shares), field + ".shares")
        self._period_and_budget("cpu.cfs_period_us", c.period, "cpu.cfs_quota_us", c.quota, field + ".quota")
        self._period_and_budget(
            "cpu.rt_period_us", c.realtime_period, "cpu.rt_runtime_us", c.realtime_runtime, field + ".realtime"
        )
        if c.burst is not None:
            self._set("cpu", "cpu.cfs_burst_us", str(c.burst), field + ".burst")
        if c.idle is not None:
            self._set("cpu", "cpu.idle", str(c.idle), field + ".idle")
        for name, value in (("cpuset.cpus", c.cpus), ("cpuset.mems", c.mems)):
            if value:
                self._set("cpuset", name, value, field)

    def _period_and_budget(
        self, period_file: str, period: int | None, budget_file: str, budget: int | None, field: str
    ) -> None:
        """A period and the time allowed in it (0 = not set); a period the kernel refuses with EINVAL (e.g. the
        old budget over the new period exceeds the parent's) is written again after the budget, as runc does."""
        retry = False
        if period:
            try:
                self._set("cpu", period_file, str(period), field)
            except CgroupError as exc:
                if not budget or not _is_einval(exc):
                    raise
                retry = True
        if budget:
            self._set("cpu", budget_file, str(budget), field)
            if retry:
                self._set("cpu", period_file, str(period), field)

    def _memory(self, m: Memory) -> list[str]:
        warnings = []
        field = "linux.resources.memory"
        swap_file = self._file("memory", "memory.memsw.limit_in_bytes")
        has_swap = bool(swap_file and os.path.exists(swap_file))
        # runc's rules: 0 means "not set" for the limit, swap and reservation; an unlimited memory limit
        # without a swap limit lifts the swap limit too
        limit, swap = m.limit or None, m.swap or None
        if limit == -1 and swap is None and has_swap:
            swap = -1
        if swap not in (None, -1) and not has_swap:
            raise CgroupError(f"{field}.swap: swap accounting is not enabled in this kernel")
        writes = [("memory.limit_in_bytes", limit, ".limit")] if limit is not None else []
        if swap is not None and has_swap:
            swap_write = ("memory.memsw.limit_in_bytes", swap, ".swap")
            # memory.limit must stay <= memsw.limit: a swap limit above the current memory limit goes first
            if swap == -1 or _current_limit(self._file("memory", "memory.limit_in_bytes")) < swap:
                writes.insert(0, swap_write)
            else:
                writes.append(swap_write)
        for name, value, key in writes:
            self._set("memory", name, str(value), field + key)
        if m.reservation:
            self._set("memory", "memory.soft_limit_in_bytes", str(m.reservation), field + ".reservation")
        if m.swappiness is not None:
            self._set("memory", "memory.swappiness", str(m.swappiness), field + ".swappiness")
        if m.disable_oom_killer:
            self._set("memory", "memory.oom_control", "1", field + ".disableOOMKiller")
        if m.use_hierarchy:
            try:
                self._set("memory", "memory.use_hierarchy", "1", field + ".useHierarchy")
            except CgroupError as exc:
                warnings.append(f"{field}.useHierarchy ignored: {exc}")
        for name, value in (("kernel", m.kernel), ("kernelTCP", m.kernel_tcp)):
            if value is not None:
                warnings.append(f"{field}.{name} is deprecated and ignored (kernel memory limits are gone)")
        return warnings

    def _blkio(self, b: BlockIO) -> None:
        field = "linux.resources.blockIO"
        base = self._paths.get("blkio")
        if base is None:
            raise CgroupError(f"{field}: the blkio controller is not mounted on this host")

        def first(*names: str) -> str:
            for name in names:
                if os.path.exists(f"{base}/{name}"):
                    return name
            raise CgroupError(f"{field}: {' / '.join(names)} not supported by this kernel's I/O scheduler")

        if b.weight is not None:
            self._set("blkio", first("blkio.weight", "blkio.bfq.weight"), str(b.weight), field + ".weight")
        if b.leaf_weight is not None:
            self._set("blkio", first("blkio.leaf_weight"), str(b.leaf_weight), field + ".leafWeight")
        for wd in b.weight_device:
            if wd.weight is not None:
                name = first("blkio.weight_device", "blkio.bfq.weight_device")
                self._set("blkio", name, f"{wd.major}:{wd.minor} {wd.weight}", field + ".weightDevice")
        for kind, td in throttles(b):
            self._set("blkio", f"blkio.throttle.{kind}_device", f"{td.major}:{td.minor} {td.rate}", field)

    def _devices(self, rules) -> None:
        if "devices" not in self._paths:
            return
        for rule in rules:
            major = "*" if rule.major is None or rule.major < 0 else str(rule.major)
            minor = "*" if rule.minor is None or rule.minor < 0 else str(rule.minor)
            line = "a" if rule.type == "a" else f"{rule.type} {major}:{minor} {rule.access}"
            self._set("devices", "devices.allow" if rule.allow else "devices.deny", line, "linux.resources.devices")
        for line in DEFAULT_ALLOWED_DEVICES:
            self._set("devices", "devices.allow", line, "linux.resources.devices")


def _cpu_stats(cpuacct: str | None, cpu: str | None) -> st.CpuStats | None:
    if not cpuacct and not cpu:
        return None
    out = st.CpuStats()
    if cpuacct:
        ticks = read_kv(f"{cpuacct}/cpuacct.stat")
        out.usage = st.CpuUsage(
            total_ns=st.read_int(f"{cpuacct}/cpuacct.usage"),
            user_ns=ticks.get("user", 0) * 10**9 // _TICKS,
            system_ns=ticks.get("system", 0) * 10**9 // _TICKS,
            per_cpu_ns=[int(x) for x in st.read_text(f"{cpuacct}/cpuacct.usage_percpu").split()],
        )
    if cpu:
        out.stat = read_kv(f"{cpu}/cpu.stat")
        out.throttling = st.Throttling(
            periods=out.stat.get("nr_periods", 0),
            throttled_periods=out.stat.get("nr_throttled", 0),
            throttled_ns=out.stat.get("throttled_time", 0),
            bursts=out.stat.get("nr_bursts", 0),
            burst_ns=out.stat.get("burst_time", 0),
        )
    return out


def _memory_stats(d: str) -> st.MemoryStats:
    entries = {}
    for entry, prefix in (
        ("usage", "memory"),
        ("swap", "memory.memsw"),
        ("kernel", "memory.kmem"),
        ("kernel_tcp", "memory.kmem.tcp"),
    ):
        if os.path.exists(f"{d}/{prefix}.usage_in_bytes"):
            entries[entry] = st.MemoryData(
                usage=st.read_int(f"{d}/{prefix}.usage_in_bytes"),
                limit=st.read_int(f"{d}/{prefix}.limit_in_bytes"),
                max=st.read_int(f"{d}/{prefix}.max_usage_in_bytes"),
                failcnt=st.read_int(f"{d}/{prefix}.failcnt"),
            )
    return st.MemoryStats(**entries, stat=read_kv(f"{d}/memory.stat"), oom=read_kv(f"{d}/memory.oom_control"))


def _blkio_stats(d: str) -> st.BlkioStats:
    def entries(name: str) -> list[st.BlkioEntry]:
        out = []
        for line in st.read_text(f"{d}/{name}").splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                major, minor = parts[0].split(":")
                out.append(st.BlkioEntry(op=parts[1], major=int(major), minor=int(minor), value=int(parts[2])))
        return out

    return st.BlkioStats(
        service_bytes=entries("blkio.throttle.io_service_bytes_recursive"),
        serviced=entries("blkio.throttle.io_serviced_recursive"),
    )


def _current_limit(path: str | None) -> int:
    try:
        return int(read(path).strip()) if path else 0
    except (OSError, ValueError):
        return 0


def _is_einval(exc: CgroupError) -> bool:
    """The kernel refused the value itself (base.write keeps the OSError as the context)."""
    cause = exc.__context__
    return isinstance(cause, OSError) and cause.errno == errno.EINVAL


def _init_cpuset(leaf: str) -> None:
    """v1 cpuset refuses tasks while cpuset.cpus/mems are empty: copy them down from the parent."""
    chain = []
    d = leaf
    while os.path.exists(f"{d}/cpuset.cpus"):
        chain.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    for child in reversed(chain[:-1]):
        parent = os.path.dirname(child)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not read(f"{child}/{name}").strip():
                write(f"{child}/{name}", read(f"{parent}/{name}").strip())
