"""cgroup v2 (unified): one directory; controllers enabled down the tree through subtree_control."""

from __future__ import annotations

import os
import signal
import time

from ..spec import CPU, BlockIO, Memory, Resources
from . import stats as st
from .base import CgroupError, Manager, hugetlb_sizes, read, read_kv, read_pids, remove_dir, throttles, write

_IO_MAX_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) → cpu.weight (1..10000), the conversion runc and crun use."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    return 1 + (weight - 10) * 9999 // 990


class V2Manager(Manager):
    version = "v2"

    def __init__(self, path: str, mount: str | None = None) -> None:
        self.path = path
        self._mount = mount or _mount_of(path)

    def paths(self) -> dict[str, str]:
        return {"": self.path}

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def create(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cgroup: mkdir {self.path}: {exc.strerror}") from None
        self._enable_controllers()

    def _enable_controllers(self) -> None:
        rel = os.path.relpath(self.path, self._mount)
        parts = [] if rel == "." else rel.split("/")
        d = self._mount
        for part in parts:
            available = read(f"{d}/cgroup.controllers").split()
            enabled = set(read(f"{d}/cgroup.subtree_control").split())
            for ctrl in available:
                if ctrl not in enabled:
                    try:
                        write(f"{d}/cgroup.subtree_control", "+" + ctrl)
                    except CgroupError:
                        pass  # e.g. cpu with realtime tasks; a resource that needs it reports it
            d = f"{d}/{part}"

    def add(self, pid: int, *, unified: bool = True) -> None:
        if unified:
            write(f"{self.path}/cgroup.procs", str(pid))

    def clone_target(self) -> str | None:
        return self.path

    def pids(self) -> list[int]:
        found: list[int] = []
        for root, _dirs, _files in os.walk(self.path):
            found += read_pids(f"{root}/cgroup.procs")
        return found

    def freeze(self) -> None:
        write(f"{self.path}/cgroup.freeze", "1")
        for _ in range(2000):
            if "frozen 1" in read(f"{self.path}/cgroup.events"):
                return
            time.sleep(0.001)
        raise CgroupError(f"cgroup: {self.path} did not report frozen in cgroup.events")

    def thaw(self) -> None:
        write(f"{self.path}/cgroup.freeze", "0")

    def freezer_state(self) -> st.FreezerState:
        try:
            if read(f"{self.path}/cgroup.freeze").strip() != "1":
                return st.FreezerState.THAWED
        except FileNotFoundError:
            return st.FreezerState.THAWED
        frozen = "frozen 1" in st.read_text(f"{self.path}/cgroup.events")
        return st.FreezerState.FROZEN if frozen else st.FreezerState.FREEZING

    def oom_source(self) -> st.OOMSource | None:
        events = f"{self.path}/memory.events"
        return st.OOMSource(events) if os.path.exists(events) else None

    def stats(self) -> st.Stats:
        d = self.path
        cpu = read_kv(f"{d}/cpu.stat")
        return st.Stats(
            cpu=st.CpuStats(
                usage=st.CpuUsage(
                    total_ns=cpu.get("usage_usec", 0) * 1000,
                    user_ns=cpu.get("user_usec", 0) * 1000,
                    system_ns=cpu.get("system_usec", 0) * 1000,
                ),
                throttling=st.Throttling(
                    periods=cpu.get("nr_periods", 0),
                    throttled_periods=cpu.get("nr_throttled", 0),
                    throttled_ns=cpu.get("throttled_usec", 0) * 1000,
                    bursts=cpu.get("nr_bursts", 0),
                    burst_ns=cpu.get("burst_usec", 0) * 1000,
                ),
                stat=cpu,
            ),
            memory=st.MemoryStats(
                usage=st.MemoryData(
                    usage=st.read_int(f"{d}/memory.current"),
                    limit=st.read_int(f"{d}/memory.max"),
                    max=st.read_int(f"{d}/memory.peak"),
                ),
                swap=st.MemoryData(
                    usage=st.read_int(f"{d}/memory.swap.current"), limit=st.read_int(f"{d}/memory.swap.max")
                ),
                stat=read_kv(f"{d}/memory.stat"),
                oom=read_kv(f"{d}/memory.events"),
            ),
            pids=st.PidsStats(current=st.read_int(f"{d}/pids.current"), limit=st.read_int(f"{d}/pids.max")),
            blkio=st.BlkioStats(devices=_io_stat(st.read_text(f"{d}/io.stat"))),
            hugetlb=[
                st.HugetlbStats(
                    pagesize=size, usage=st.read_int(f"{d}/hugetlb.{size}.current"), limit=st.read_int(f"{d}/{name}")
                )
                for name, size in hugetlb_sizes(d, ".max")
            ],
        )

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL and os.path.exists(f"{self.path}/cgroup.kill"):
            write(f"{self.path}/cgroup.kill", "1")
            return
        super().kill_all(sig)

    def destroy(self) -> None:
        for root, _dirs, _files in sorted(os.walk(self.path), key=lambda e: -len(e[0])):
            remove_dir(root)

    def set_hugetlb(self, page_size: str, limit: int) -> None:
        self._set(f"hugetlb.{page_size}.max", str(limit), "linux.resources.hugepageLimits")

    def _set(self, name: str, value: str, field: str) -> None:
        path = f"{self.path}/{name}"
        if not os.path.exists(path):
            raise CgroupError(f"{field}: {name} is not available (controller not enabled or not supported)")
        write(path, value)

    def apply(self, resources: Resources | None, *, update: bool = False) -> list[str]:
        warnings: list[str] = []
        if resources is None:
            return warnings
        if resources.memory:
            warnings += self._memory(resources.memory)
        if resources.cpu:
            self._cpu(resources.cpu)
        if resources.pids_limit:  # runc: 0 leaves pids.max alone, a negative limit is "max"
            pids = resources.pids_limit
            self._set("pids.max", str(pids) if pids > 0 else "max", "linux.resources.pids.limit")
        if resources.block_io:
            self._io(resources.block_io)
        for hp in resources.hugepage_limits:
            self.set_hugetlb(hp.page_size, hp.limit)
        self._unified_files(resources.unified)
        if resources.devices:
            warnings += self._devices(resources.devices, update)
        return warnings

    def _memory(self, m: Memory) -> list[str]:
        f = "linux.resources.memory"
        limit = m.limit or None  # runc: 0 means "not set" for the limit, reservation and swap
        if limit is not None:
            self._set("memory.max", "max" if limit == -1 else str(limit), f + ".limit")
        if m.reservation:
            self._set("memory.low", "max" if m.reservation == -1 else str(m.reservation), f + ".reservation")
        if m.swap:
            if m.swap == -1:
                swap = "max"
            elif limit is None or limit == -1:
                raise CgroupError(f"{f}.swap: a swap limit needs a memory limit on cgroup v2")
            else:
                swap = str(m.swap - limit)  # OCI swap is memory+swap; v2 limits swap alone
            if os.path.exists(f"{self.path}/memory.swap.max"):
                self._set("memory.swap.max", swap, f + ".swap")
            elif swap != "max":
                raise CgroupError(f"{f}.swap: swap accounting is not enabled in this kernel")
        unsupported = {"swappiness": m.swappiness is not None, "disableOOMKiller": bool(m.disable_oom_killer)}
        deprecated = {"kernel": m.kernel is not None, "kernelTCP": m.kernel_tcp is not None}
        return [
            f"{f}.{name} is not supported on cgroup v2 and is ignored" for name, on in unsupported.items() if on
        ] + [f"{f}.{name} is deprecated and ignored" for name, on in deprecated.items() if on]

    def _cpu(self, c: CPU) -> None:
        f = "linux.resources.cpu"
        if c.shares:
            self._set("cpu.weight", str(shares_to_weight(c.shares)), f + ".shares")
        if c.quota is not None or c.period is not None:
            quota = "max" if c.quota is None or c.quota <= 0 else str(c.quota)
            self._set("cpu.max", f"{quota} {c.period or 100000}", f + ".quota")
        if c.burst is not None:
            self._set("cpu.max.burst", str(c.burst), f + ".burst")
        if c.idle is not None:
            self._set("cpu.idle", str(c.idle), f + ".idle")
        if c.realtime_runtime or c.realtime_period:
            raise CgroupError(f"{f}.realtimeRuntime: realtime scheduling limits need cgroup v1")
        if c.cpus:
            self._set("cpuset.cpus", c.cpus, f + ".cpus")
        if c.mems:
            self._set("cpuset.mems", c.mems, f + ".mems")

    def _io(self, b: BlockIO) -> None:
        f = "linux.resources.blockIO"
        if b.weight is not None:
            if os.path.exists(f"{self.path}/io.bfq.weight"):
                self._set("io.bfq.weight", str(b.weight), f + ".weight")
            else:
                self._set("io.weight", str(blkio_weight_to_io_weight(b.weight)), f + ".weight")
        for kind, td in throttles(b):
            self._set("io.max", f"{td.major}:{td.minor} {_IO_MAX_KEYS[kind]}={td.rate}", f)

    def _unified_files(self, unified: tuple[tuple[str, str], ...]) -> None:
        for key, value in unified:
            if "/" in key or key.startswith("."):
                raise CgroupError(f"linux.resources.unified.{key}: not a cgroup file name")
            self._set(key, value, f"linux.resources.unified.{key}")

    def _devices(self, rules, update: bool) -> list[str]:
        if update:
            return ["linux.resources.devices: changing device rules of a running container is not supported"]
        from .devices import attach

        attach(self.path, rules)
        return []


def _mount_of(path: str) -> str:
    from .layout import detect_layout

    return detect_layout().unified_mount


def _io_stat(text: str) -> list[st.IoUsage]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = parts[0].split(":")
        values = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        keys = ("rbytes", "wbytes", "rios", "wios")
        out.append(st.IoUsage((int(major), int(minor)), **{k: int(values.get(k, 0)) for k in keys}))
    return out
