"""cgroup v1: one directory per hierarchy; on hybrid hosts the cgroup2 mount is joined too."""

from __future__ import annotations

import os
import time

from ..spec import BlockIO, Memory, Resources
from .base import CgroupError, Manager, read, read_pids, remove_dir, write
from .v2 import V2Manager

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

    def add(self, pid: int) -> None:
        for d in self._dirs():
            write(f"{d}/cgroup.procs", str(pid))
        if self._unified:
            self._unified.add(pid)

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

    def frozen(self) -> bool:
        path = self._file("freezer", "freezer.state")
        try:
            return path is not None and read(path).strip() in ("FROZEN", "FREEZING")
        except FileNotFoundError:
            return False

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
            c = resources.cpu
            for name, value in (
                ("cpu.shares", c.shares),
                ("cpu.cfs_period_us", c.period),
                ("cpu.cfs_quota_us", c.quota),
                ("cpu.cfs_burst_us", c.burst),
                ("cpu.rt_period_us", c.realtime_period),
                ("cpu.rt_runtime_us", c.realtime_runtime),
                ("cpu.idle", c.idle),
            ):
                if value is not None:
                    self._set("cpu", name, str(value), "linux.resources.cpu")
            for name, value in (("cpuset.cpus", c.cpus), ("cpuset.mems", c.mems)):
                if value:
                    self._set("cpuset", name, value, "linux.resources.cpu")
        if resources.pids_limit is not None:
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

    def _memory(self, m: Memory) -> list[str]:
        warnings = []
        field = "linux.resources.memory"
        swap_file = self._file("memory", "memory.memsw.limit_in_bytes")
        has_swap = bool(swap_file and os.path.exists(swap_file))
        if m.swap is not None and m.swap != -1 and not has_swap:
            raise CgroupError(f"{field}.swap: swap accounting is not enabled in this kernel")
        if m.limit is not None:
            swap = m.swap if has_swap else None
            try:
                # memory.limit must stay <= memsw.limit: order the two writes by direction.
                self._set("memory", "memory.limit_in_bytes", str(m.limit), field + ".limit")
                if swap is not None:
                    self._set("memory", "memory.memsw.limit_in_bytes", str(swap), field + ".swap")
            except CgroupError:
                if swap is None:
                    raise
                self._set("memory", "memory.memsw.limit_in_bytes", str(swap), field + ".swap")
                self._set("memory", "memory.limit_in_bytes", str(m.limit), field + ".limit")
        elif m.swap is not None and has_swap:
            self._set("memory", "memory.memsw.limit_in_bytes", str(m.swap), field + ".swap")
        if m.reservation is not None:
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
        for name, devices in (
            ("blkio.throttle.read_bps_device", b.throttle_read_bps_device),
            ("blkio.throttle.write_bps_device", b.throttle_write_bps_device),
            ("blkio.throttle.read_iops_device", b.throttle_read_iops_device),
            ("blkio.throttle.write_iops_device", b.throttle_write_iops_device),
        ):
            for td in devices:
                self._set("blkio", name, f"{td.major}:{td.minor} {td.rate}", field)

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
