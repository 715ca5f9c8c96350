"""The systemd cgroup driver: the container's cgroup is a transient scope made through systemd's D-Bus API.

As runc's systemd driver does: ``cgroupsPath`` ``slice:prefix:name`` becomes unit ``prefix-name.scope`` in
``slice``; the unit is started with ``Delegate=yes``, the container's first process (``PIDs``) and the
resource properties systemd knows, then every setting is also written to the delegated directory by the
cgroupfs manager (v1, hybrid or v2), which does everything else (freeze, stats, kill, exec joins). Update goes
through ``SetUnitProperties`` and then the files; delete stops the unit and waits for its job.
"""

from __future__ import annotations

import logging
import os
import re

from .. import dbus
from ..records import record
from ..spec import Resources
from . import stats as st
from .base import CgroupError, Manager
from .layout import Layout
from .v1 import V1Manager
from .v2 import V2Manager, shares_to_weight

log = logging.getLogger("pyoci.runtime")

DRIVER = "systemd cgroup driver"
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
INFINITY = 2**64 - 1  # systemd's USEC_INFINITY / CGROUP_LIMIT_MAX
DEFAULT_SLICE = "system.slice"
DEFAULT_PREFIX = "pyoci"
_SYSTEMD_PATH_RE = re.compile(r"^[^:/]*:[^:/]*:[^:/]+$")


@record
class Unit:
    name: str  # "prefix-name.scope", or "name.slice" when the container asked for a slice
    slice: str  # the parent slice unit
    path: str  # the unit's cgroup, from the root of the hierarchy (/system.slice/prefix-name.scope)

    @property
    def is_slice(self) -> bool:
        return self.name.endswith(".slice")


def is_systemd_path(cgroups_path: str) -> bool:
    """A ``slice:prefix:name`` cgroupsPath (what containerd passes with ``SystemdCgroup = true``)."""
    return bool(_SYSTEMD_PATH_RE.match(cgroups_path))


def systemd_path(cgroups_path: str, container_id: str) -> str:
    """The cgroupsPath to record for ``--systemd-cgroup``: the config's, or ``system.slice:pyoci:ID`` if empty."""
    if not cgroups_path:
        return f"{DEFAULT_SLICE}:{DEFAULT_PREFIX}:{container_id}"
    if not is_systemd_path(cgroups_path):
        raise CgroupError(
            f'{DRIVER}: expected cgroupsPath of the form "slice:prefix:name" (e.g. "system.slice:pyoci:ID"), '
            f"got {cgroups_path!r}"
        )
    return cgroups_path


def expand_slice(slice_name: str) -> str:
    """A slice unit's cgroup: ``a-b.slice`` lives at ``/a.slice/a-b.slice``; ``-.slice`` is the root."""
    suffix = ".slice"
    if not slice_name.endswith(suffix) or len(slice_name) <= len(suffix) or "/" in slice_name:
        raise CgroupError(f"{DRIVER}: invalid slice name {slice_name!r}")
    stem = slice_name[: -len(suffix)]
    if stem == "-":
        return "/"
    path, prefix = "", ""
    for part in stem.split("-"):
        if not part:
            raise CgroupError(f"{DRIVER}: invalid slice name {slice_name!r}")
        path += f"/{prefix}{part}{suffix}"
        prefix += part + "-"
    return path


def parse_unit(cgroups_path: str) -> Unit:
    slice_name, prefix, name = cgroups_path.split(":")
    slice_name = slice_name or DEFAULT_SLICE
    unit = name if name.endswith(".slice") else (f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
    if unit.endswith(".slice"):
        expand_slice(unit)  # validates
    return Unit(unit, slice_name, expand_slice(slice_name).rstrip("/") + "/" + unit)


def cpu_quota_per_sec(quota: int, period: int) -> int:
    """CPUQuotaPerSecUSec for a CFS quota/period, rounded up to 10 ms as runc does (systemd keeps whole %)."""
    if quota <= 0:
        return INFINITY
    usec = quota * 1_000_000 // (period or 100_000)
    return usec if usec % 10_000 == 0 else (usec // 10_000 + 1) * 10_000


def range_to_bits(ranges: str) -> bytes:
    """A cpuset list ("0-2,7") as systemd's AllowedCPUs byte mask (bit n of byte n//8 is cpu n)."""
    bits = 0
    for part in ranges.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise CgroupError(f"{DRIVER}: invalid cpuset list {ranges!r}") from None
        if first < 0 or last < first or last > 65535:
            raise CgroupError(f"{DRIVER}: invalid cpuset list {ranges!r}")
        for n in range(first, last + 1):
            bits |= 1 << n
    return bits.to_bytes((bits.bit_length() + 7) // 8 or 1, "little") if bits else b""


def unit_properties(resources: Resources | None, v2: bool) -> list[tuple[str, dbus.Variant]]:
    """The resource properties systemd knows, from the OCI resources (the rest is written to the files)."""
    props: list[tuple[str, dbus.Variant]] = []
    if resources is None:
        return props
    m = resources.memory
    if m is not None:
        limit = m.limit or None
        if limit is not None:
            props.append(("MemoryMax" if v2 else "MemoryLimit", dbus.Variant("t", INFINITY if limit < 0 else limit)))
        if v2 and m.reservation:
            props.append(("MemoryLow", dbus.Variant("t", INFINITY if m.reservation < 0 else m.reservation)))
        if v2 and m.swap:
            if m.swap < 0:
                props.append(("MemorySwapMax", dbus.Variant("t", INFINITY)))
            elif limit is not None and limit > 0 and m.swap >= limit:
                props.append(("MemorySwapMax", dbus.Variant("t", m.swap - limit)))
    if v2:
        for key, value in resources.unified:
            if key == "memory.high" and (value == "max" or value.isdigit()):
                props.append(("MemoryHigh", dbus.Variant("t", INFINITY if value == "max" else int(value))))
    c = resources.cpu
    if c is not None:
        if c.shares:
            if v2:
                props.append(("CPUWeight", dbus.Variant("t", shares_to_weight(c.shares))))
            else:
                props.append(("CPUShares", dbus.Variant("t", c.shares)))
        if c.quota or c.period:
            props.append(("CPUQuotaPerSecUSec", dbus.Variant("t", cpu_quota_per_sec(c.quota or 0, c.period or 0))))
        if c.period:
            props.append(("CPUQuotaPeriodUSec", dbus.Variant("t", c.period)))
        if v2 and c.cpus:
            props.append(("AllowedCPUs", dbus.Variant("ay", range_to_bits(c.cpus))))
        if v2 and c.mems:
            props.append(("AllowedMemoryNodes", dbus.Variant("ay", range_to_bits(c.mems))))
    if resources.pids_limit:
        limit = resources.pids_limit
        props.append(("TasksMax", dbus.Variant("t", limit if limit > 0 else INFINITY)))
    return props


def systemd_running() -> bool:
    """systemd is the init of this host (what sd_booted() and runc check)."""
    return os.path.isdir("/run/systemd/system")


def connect() -> dbus.Connection:
    """A connection to systemd: the system bus, or systemd's private socket as runc's fallback does."""
    if not systemd_running():
        raise CgroupError(f"{DRIVER}: systemd is not running as init on this host (/run/systemd/system is missing)")
    errors = []
    for path, bus in ((dbus.SYSTEM_BUS, True), (dbus.SYSTEMD_PRIVATE, False)):
        try:
            conn = dbus.Connection(path, bus=bus)
        except (OSError, dbus.DBusError) as exc:
            errors.append(f"{path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
            continue
        try:
            if bus:
                rule = (
                    f"type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',interface='{MANAGER}',member='JobRemoved'"
                )
                conn.call(
                    "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", rule
                )
            conn.call(SYSTEMD, SYSTEMD_PATH, MANAGER, "Subscribe")
        except (OSError, dbus.DBusError) as exc:
            conn.close()
            errors.append(f"{path}: {exc}")
            continue
        return conn
    raise CgroupError(f"{DRIVER}: cannot connect to D-Bus at {' or '.join(errors)}")


class SystemdManager(Manager):
    """One container's transient unit and, under it, the delegated cgroup managed by a cgroupfs manager."""

    def __init__(self, cgroups_path: str, layout: Layout) -> None:
        self.unit = parse_unit(cgroups_path)
        self.layout = layout
        if layout.mode == "unified":
            self.fs: Manager = V2Manager(layout.resolve_v2(self.unit.path))
        else:
            unified = V2Manager(layout.resolve_v2(self.unit.path)) if layout.unified_mount else None
            self.fs = V1Manager(layout.resolve_v1(self.unit.path), unified=unified)
        self._resources: Resources | None = None
        self._starting = False  # create() was called: the first add() starts the unit with that pid

    @property
    def version(self) -> str:  # type: ignore[override]
        return self.fs.version

    def paths(self) -> dict[str, str]:
        return self.fs.paths()

    def exists(self) -> bool:
        return self.fs.exists()

    def create(self) -> None:
        """Check that systemd can be reached and that the unit is new; the unit starts with the first process."""
        with connect() as conn:
            try:
                (unit_path,) = conn.call(SYSTEMD, SYSTEMD_PATH, MANAGER, "GetUnit", "s", self.unit.name)
            except dbus.DBusError as exc:
                if exc.name != "org.freedesktop.systemd1.NoSuchUnit":
                    raise self._failed("GetUnit", exc) from None
            else:
                state = self._active_state(conn, unit_path)
                if state not in ("inactive", "failed"):
                    raise CgroupError(f"{DRIVER}: unit {self.unit.name} already exists ({state})")
                self._reset_failed(conn)
        if self.fs.exists():
            raise CgroupError(f"{DRIVER}: unit {self.unit.name} already exists ({self.paths()})")
        self._starting = True

    def apply(self, resources: Resources | None, *, update: bool = False) -> list[str]:
        if self._starting:
            self._resources = resources  # given to systemd and then written to the files when the unit starts
            return []
        if update:
            props = unit_properties(resources, self.fs.version == "v2")
            if props:
                with connect() as conn:
                    try:
                        conn.call(
                            SYSTEMD, SYSTEMD_PATH, MANAGER, "SetUnitProperties", "sba(sv)", self.unit.name, True, props
                        )
                    except dbus.DBusError as exc:
                        raise self._failed("SetUnitProperties", exc) from None
        return self.fs.apply(resources, update=update)

    def add(self, pid: int) -> None:
        if not self._starting:
            self.fs.add(pid)
            return
        self._starting = False
        self._start(pid)
        self.fs.create()  # controllers systemd did not enable, v1 hierarchies it does not manage (as runc does)
        self.fs.add(pid)
        for warning in self.fs.apply(self._resources):
            log.warning("%s: %s", self.unit.name, warning)

    def _start(self, pid: int) -> None:
        props: list[tuple[str, dbus.Variant]] = [
            ("Description", dbus.Variant("s", f"pyoci container {self.unit.name}")),
        ]
        if self.unit.is_slice:
            props.append(("Wants", dbus.Variant("as", [self.unit.slice])))
        else:
            props += [
                ("Slice", dbus.Variant("s", self.unit.slice)),
                ("Delegate", dbus.Variant("b", True)),
                ("PIDs", dbus.Variant("au", [pid])),
            ]
        props += [
            ("DefaultDependencies", dbus.Variant("b", False)),
            ("MemoryAccounting", dbus.Variant("b", True)),
            ("CPUAccounting", dbus.Variant("b", True)),
            ("TasksAccounting", dbus.Variant("b", True)),
        ]
        if self.fs.version == "v2":
            props.append(("IOAccounting", dbus.Variant("b", True)))
        props += unit_properties(self._resources, self.fs.version == "v2")
        with connect() as conn:
            self._job(conn, "StartTransientUnit", "ssa(sv)a(sa(sv))", self.unit.name, "replace", props, [])

    def _job(self, conn: dbus.Connection, method: str, signature: str, *args) -> None:
        """Call a method that queues a job, then wait for the job's JobRemoved (as runc does)."""
        try:
            (job,) = conn.call(SYSTEMD, SYSTEMD_PATH, MANAGER, method, signature, *args)
            signal = conn.wait_signal(
                lambda m: m.member == "JobRemoved" and m.interface == MANAGER and len(m.body) == 4 and m.body[1] == job
            )
        except dbus.DBusError as exc:
            raise self._failed(method, exc) from None
        result = signal.body[3]
        if result != "done":
            raise CgroupError(f"{DRIVER}: {method}({self.unit.name}) failed: job {job} ended with result {result!r}")

    def _failed(self, method: str, exc: dbus.DBusError) -> CgroupError:
        if exc.name == "org.freedesktop.systemd1.UnitExists":
            return CgroupError(f"{DRIVER}: unit {self.unit.name} already exists: {exc.message}")
        return CgroupError(f"{DRIVER}: {method}({self.unit.name}) failed: {exc}")

    def _active_state(self, conn: dbus.Connection, unit_path: str) -> str:
        try:
            (state,) = conn.call(
                SYSTEMD, unit_path, "org.freedesktop.DBus.Properties", "Get", "ss",
                "org.freedesktop.systemd1.Unit", "ActiveState",
            )  # fmt: skip
        except dbus.DBusError:
            return "unknown"
        return str(state.value)

    def _reset_failed(self, conn: dbus.Connection) -> None:
        try:
            conn.call(SYSTEMD, SYSTEMD_PATH, MANAGER, "ResetFailedUnit", "s", self.unit.name)
        except dbus.DBusError:
            pass  # not failed, or gone already

    def pids(self) -> list[int]:
        return self.fs.pids()

    def freeze(self) -> None:
        self.fs.freeze()

    def thaw(self) -> None:
        self.fs.thaw()

    def freezer_state(self) -> st.FreezerState:
        return self.fs.freezer_state()

    def stats(self) -> st.Stats:
        return self.fs.stats()

    def oom_source(self) -> st.OOMSource | None:
        return self.fs.oom_source()

    def kill_all(self, sig: int = 9) -> None:
        self.fs.kill_all(sig)

    def destroy(self) -> None:
        """Stop the unit (waiting for its job) and reset it if it failed; then remove what is left of the
        directories (v1 hierarchies systemd does not manage). Without systemd there is no unit to stop."""
        if systemd_running():
            with connect() as conn:
                try:
                    self._job(conn, "StopUnit", "ss", self.unit.name, "replace")
                except CgroupError as exc:
                    if "NoSuchUnit" not in str(exc):
                        raise
                self._reset_failed(conn)
        if self.fs.exists():
            self.fs.destroy()

    def destroy_all(self, timeout: float = 5.0) -> None:
        if self.fs.exists():
            super().destroy_all(timeout)  # kills what is left, then destroy()
        elif systemd_running():
            self.destroy()  # a unit without a cgroup (failed, or stopping): stop and reset it
