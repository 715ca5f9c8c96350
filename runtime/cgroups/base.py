"""The manager interface and the small file helpers every implementation shares."""

from __future__ import annotations

import errno
import os
import signal
import time
from abc import ABC, abstractmethod

from ..errors import PyociError
from ..spec import BlockIO, Resources, ThrottleDevice
from .stats import FreezerState, OOMSource, Stats


class CgroupError(PyociError):
    pass


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cgroup: open {path}: {exc.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise CgroupError(f"cgroup: write {value!r} to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_kv(path: str) -> dict[str, int]:
    """A "key value" file (memory.stat, cpu.stat, memory.events, ...); missing file → {}, odd lines skipped."""
    try:
        text = read(path)
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def hugetlb_sizes(d: str, suffix: str) -> list[tuple[str, str]]:
    """(file name, page size) of each ``hugetlb.<size><suffix>`` file in a cgroup directory."""
    if not os.path.isdir(d):
        return []
    return [
        (name, name.split(".")[1])
        for name in sorted(os.listdir(d))
        if name.startswith("hugetlb.") and name.endswith(suffix) and name.count(".") == 1 + suffix.count(".")
    ]


def throttles(b: BlockIO) -> list[tuple[str, ThrottleDevice]]:
    """blockIO's throttle entries as (kind, device), kind one of read_bps, write_bps, read_iops, write_iops."""
    kinds = {
        "read_bps": b.throttle_read_bps_device,
        "write_bps": b.throttle_write_bps_device,
        "read_iops": b.throttle_read_iops_device,
        "write_iops": b.throttle_write_iops_device,
    }
    return [(kind, td) for kind, devices in kinds.items() for td in devices]


def oom_kills(path: str) -> int:
    """The ``oom_kill`` counter of a memory.oom_control or memory.events file (0 if absent)."""
    return read_kv(path).get("oom_kill", 0)


def read_pids(path: str) -> list[int]:
    try:
        return [int(line) for line in read(path).split()]
    except FileNotFoundError:
        return []


def remove_dir(path: str, attempts: int = 50) -> None:
    """rmdir a cgroup, retrying while its last processes finish exiting (EBUSY)."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupError(f"cgroup: remove {path}: {exc.strerror}") from None
            time.sleep(0.01)
    raise CgroupError(f"cgroup: remove {path}: still busy (processes left: {read_pids(path + '/cgroup.procs')})")


class Manager(ABC):
    """One container's cgroup, wherever the host keeps it (runc's ``cgroups.Manager``, youki's ``CgroupManager``)."""

    version: str  # "v1", "v2", or "hybrid" (v1 controllers with the cgroup2 mount joined too)

    @abstractmethod
    def create(self) -> None:
        """Make the cgroup directories (idempotent)."""

    @abstractmethod
    def add(self, pid: int) -> None:
        """Move a process into the cgroup."""

    def clone_target(self) -> str | None:
        """The cgroup2 directory a new process can be created in directly (clone3 CLONE_INTO_CGROUP), after
        which ``add(pid, unified=False)`` moves it into the v1 hierarchies only; None: use ``add``."""
        return None

    @abstractmethod
    def apply(self, resources: Resources | None, *, update: bool = False) -> list[str]:
        """Write resource limits; returns warnings (ignored deprecated settings)."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Every process in the cgroup (and below)."""

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def freezer_state(self) -> FreezerState:
        """THAWED also when the host has no freezer."""

    def frozen(self) -> bool:
        """Frozen or on its way there (a SIGKILL would not take effect)."""
        return self.freezer_state() is not FreezerState.THAWED

    @abstractmethod
    def stats(self) -> Stats: ...

    @abstractmethod
    def oom_source(self) -> OOMSource | None:
        """The file counting this cgroup's OOM kills and how to be told of changes; None without a memory cgroup."""

    def oom_kill_count(self) -> int:
        source = self.oom_source()
        return oom_kills(source.counter_file) if source else 0

    @abstractmethod
    def destroy(self) -> None:
        """Remove the cgroup directories (the cgroup must be empty)."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def paths(self) -> dict[str, str]:
        """Controller (or "" for the unified hierarchy) → directory (what a container's /sys/fs/cgroup shows)."""

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process in the cgroup; a frozen cgroup is thawed so SIGKILL takes effect."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL and self.frozen():
            self.thaw()

    def destroy_all(self, timeout: float = 5.0) -> None:
        """Kill whatever is left and remove the cgroup."""
        if not self.exists():
            return
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            self.kill_all()
            time.sleep(0.005)
        self.destroy()
