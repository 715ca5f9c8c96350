"""Zero resource values mean "not set" (runc's rule): nerdctl v2 sends zeros for every CPU field it has.

The write-order tests record the files a manager writes in a directory of plain files standing in for a
cgroup (the kernel's refusals, such as EINVAL for a period, are simulated there); the last tests apply the
same zeros to a real v1 cpu and memory cgroup of this host (a hybrid host: v1 controllers).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pyoci.runtime.cgroups import base, detect_layout, v1, v2
from pyoci.runtime.cgroups.base import CgroupError
from pyoci.runtime.cgroups.v1 import V1Manager
from pyoci.runtime.cgroups.v2 import V2Manager
from pyoci.runtime.spec import CPU, Memory, Resources

# what nerdctl v2.1.3 puts in linux.resources for a plain `nerdctl run` (no limits asked for)
NERDCTL_V2_CPU = CPU(shares=0, quota=0, period=0, realtime_runtime=0, realtime_period=0)
V1_FILES = {
    "cpu": (
        "cpu.shares",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
        "cpu.rt_period_us",
        "cpu.rt_runtime_us",
    ),
    "memory": (
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.soft_limit_in_bytes",
    ),
    "pids": ("pids.max",),
}
V2_FILES = ("memory.max", "memory.low", "memory.swap.max", "pids.max")


class Recorder:
    """Stands in for base.write: logs (file name, value) and refuses what ``refuse`` names with ``errno``."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.refuse: dict[tuple[str, str], int] = {}
        self.current: dict[str, str] = {}

    def __call__(self, path: str, value: str) -> None:
        name = os.path.basename(path)
        err = self.refuse.pop((name, value), None)
        if err is not None:
            try:
                raise OSError(err, os.strerror(err))
            except OSError as exc:
                raise CgroupError(f"cgroup: write {value!r} to {path}: {exc.strerror}") from None
        self.writes.append((name, value))


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(v1, "write", rec)
    monkeypatch.setattr(v2, "write", rec)
    monkeypatch.setattr(v1, "read", lambda path: rec.current.get(os.path.basename(path), "0"))
    return rec


@pytest.fixture
def v1_manager(tmp_path: Path) -> V1Manager:
    paths = {}
    for subsystem, names in V1_FILES.items():
        d = tmp_path / subsystem
        d.mkdir()
        for name in names:
            (d / name).write_text("")
        paths[subsystem] = str(d)
    return V1Manager(paths)


@pytest.fixture
def v2_manager(tmp_path: Path) -> V2Manager:
    for name in V2_FILES:
        (tmp_path / name).write_text("")
    return V2Manager(str(tmp_path), mount=str(tmp_path))


def test_v1_zero_cpu_values_write_nothing(v1_manager, recorder):
    v1_manager.apply(Resources(cpu=NERDCTL_V2_CPU), update=True)
    assert recorder.writes == []


def test_v1_set_cpu_values_are_written_period_before_budget(v1_manager, recorder):
    cpu = CPU(shares=512, quota=50000, period=100000, realtime_runtime=9500, realtime_period=10000)
    v1_manager.apply(Resources(cpu=cpu), update=True)
    assert recorder.writes == [
        ("cpu.shares", "512"),
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "50000"),
        ("cpu.rt_period_us", "10000"),
        ("cpu.rt_runtime_us", "9500"),
    ]


def test_v1_quota_minus_one_is_written_as_unlimited(v1_manager, recorder):
    v1_manager.apply(Resources(cpu=CPU(quota=-1, period=0)), update=True)
    assert recorder.writes == [("cpu.cfs_quota_us", "-1")]


@pytest.mark.parametrize(
    ("cpu", "first", "second"),
    [
        (CPU(quota=20000, period=50000), "cpu.cfs_quota_us", "cpu.cfs_period_us"),
        (CPU(realtime_runtime=900, realtime_period=1000), "cpu.rt_runtime_us", "cpu.rt_period_us"),
    ],
)
def test_v1_period_refused_with_einval_is_retried_after_its_budget(v1_manager, recorder, cpu, first, second):
    period = str(cpu.period or cpu.realtime_period)
    recorder.refuse[(second, period)] = errno.EINVAL
    v1_manager.apply(Resources(cpu=cpu), update=True)
    assert [name for name, _ in recorder.writes] == [first, second]


def test_v1_period_refused_without_a_budget_is_an_error(v1_manager, recorder):
    recorder.refuse[("cpu.rt_period_us", "1000")] = errno.EINVAL
    with pytest.raises(CgroupError, match=r"cpu.rt_period_us: Invalid argument"):
        v1_manager.apply(Resources(cpu=CPU(realtime_period=1000, realtime_runtime=0)), update=True)


def test_v1_period_refused_for_another_reason_is_not_retried(v1_manager, recorder):
    recorder.refuse[("cpu.cfs_period_us", "50000")] = errno.EPERM
    with pytest.raises(CgroupError, match="Operation not permitted"):
        v1_manager.apply(Resources(cpu=CPU(quota=20000, period=50000)), update=True)


def test_v1_zero_memory_and_pids_write_nothing(v1_manager, recorder):
    v1_manager.apply(Resources(memory=Memory(limit=0, swap=0, reservation=0), pids_limit=0), update=True)
    assert recorder.writes == []


def test_v1_negative_pids_limit_is_max(v1_manager, recorder):
    v1_manager.apply(Resources(pids_limit=-1), update=True)
    assert recorder.writes == [("pids.max", "max")]


def test_v1_unlimited_memory_lifts_the_swap_limit_first(v1_manager, recorder):
    v1_manager.apply(Resources(memory=Memory(limit=-1)), update=True)
    assert recorder.writes == [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")]


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        # growing: memsw first, or memory.limit would exceed the old memsw limit
        ("10485760", ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),
        # shrinking: memory first, or the new memsw limit would be below the old memory limit
        ("209715200", ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),
    ],
)
def test_v1_memory_and_swap_are_ordered_by_the_current_limit(v1_manager, recorder, current, expected):
    recorder.current["memory.limit_in_bytes"] = current
    v1_manager.apply(Resources(memory=Memory(limit=52428800, swap=104857600)), update=True)
    assert [name for name, _ in recorder.writes] == expected


def test_v2_zero_memory_and_pids_write_nothing(v2_manager, recorder):
    v2_manager.apply(Resources(memory=Memory(limit=0, swap=0, reservation=0), pids_limit=0), update=True)
    assert recorder.writes == []


# ------------------------------------------------------------------------------ a real v1 cgroup


@pytest.fixture
def real_v1_cgroup():
    layout = detect_layout()
    if not {"cpu", "memory", "pids"} <= set(layout.v1_mounts):
        pytest.skip(f"needs v1 cpu, memory and pids controllers (this host: {layout.mode})")
    if os.geteuid() != 0:
        pytest.fail("the real-cgroup tests need root")
    manager = V1Manager(
        {ss: p for ss, p in layout.resolve_v1(f"/pyoci-unit-zero-{os.getpid()}").items() if ss in V1_FILES}
    )
    manager.create()
    yield manager
    manager.destroy()


def test_real_v1_cgroup_accepts_nerdctl_v2_zeros_and_keeps_its_values(real_v1_cgroup):
    paths = real_v1_cgroup.paths()
    files = [f"{paths[ss]}/{name}" for ss, names in V1_FILES.items() for name in names]
    before = {path: base.read(path) for path in files if os.path.exists(path)}
    resources = Resources(cpu=NERDCTL_V2_CPU, memory=Memory(limit=0, swap=0, reservation=0), pids_limit=0)
    real_v1_cgroup.apply(resources)
    after = {path: base.read(path) for path in before}
    assert after == before


def test_real_v1_cgroup_takes_set_values(real_v1_cgroup):
    paths = real_v1_cgroup.paths()
    cpu = CPU(shares=256, quota=30000, period=60000)
    real_v1_cgroup.apply(Resources(cpu=cpu, memory=Memory(limit=64 << 20), pids_limit=42))
    assert base.read(f"{paths['cpu']}/cpu.shares").strip() == "256"
    assert base.read(f"{paths['cpu']}/cpu.cfs_quota_us").strip() == "30000"
    assert base.read(f"{paths['cpu']}/cpu.cfs_period_us").strip() == "60000"
    assert base.read(f"{paths['memory']}/memory.limit_in_bytes").strip() == str(64 << 20)
    assert base.read(f"{paths['pids']}/pids.max").strip() == "42"
