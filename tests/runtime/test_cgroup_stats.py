"""The cgroup managers' own knowledge: version, stats(), OOM source and count, freezer state.

The stats tests read directories of plain files laid out like a v1 and a v2 cgroup (this host has no cgroup2
controllers); the Metrics protobufs and the ``pyoci events --stats`` data made from them are checked field by
field. The last tests use a real v1 cgroup and a real cgroup2 directory of this hybrid host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyoci.runtime.cgroups import FreezerState, OOMSource, detect_layout
from pyoci.runtime.cgroups.stats import UNLIMITED, events_data
from pyoci.runtime.cgroups.v1 import V1Manager
from pyoci.runtime.cgroups.v2 import V2Manager
from pyoci.shim import metrics

TICKS = os.sysconf("SC_CLK_TCK")

V1_TREE = {
    "memory": {
        "memory.stat": "cache 4096\nrss 8192\nmapped_file 0\npgfault 77\ntotal_cache 4096\ntotal_rss 8192\n"
        "hierarchical_memory_limit 67108864\nhierarchical_memsw_limit 9223372036854771712\n",
        "memory.usage_in_bytes": "12288\n",
        "memory.limit_in_bytes": "67108864\n",
        "memory.max_usage_in_bytes": "20480\n",
        "memory.failcnt": "2\n",
        "memory.memsw.usage_in_bytes": "12288\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.max_usage_in_bytes": "20480\n",
        "memory.memsw.failcnt": "0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    },
    "cpuacct": {
        "cpuacct.usage": "123456789\n",
        "cpuacct.usage_percpu": "100000000 23456789 \n",
        "cpuacct.stat": f"user {3 * TICKS}\nsystem {TICKS}\n",
    },
    "cpu": {"cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n"},
    "pids": {"pids.current": "3\n", "pids.max": "max\n"},
    "blkio": {
        "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 512\nTotal 4608\n",
        "blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 1\nTotal 2\n",
    },
    "hugetlb": {
        "hugetlb.2MB.limit_in_bytes": "4194304\n",
        "hugetlb.2MB.usage_in_bytes": "2097152\n",
        "hugetlb.2MB.max_usage_in_bytes": "2097152\n",
        "hugetlb.2MB.failcnt": "1\n",
        "hugetlb.2MB.rsvd.limit_in_bytes": "4194304\n",
    },
}

V2_TREE = {
    "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 8\nnr_throttled 2\n"
    "throttled_usec 30\nnr_bursts 1\nburst_usec 7\ncore_sched.force_idle_usec 0\n",
    "memory.stat": "anon 4096\nfile 8192\npgfault 12\nworkingset_refault_anon 1\n",
    "memory.current": "12288\n",
    "memory.max": "max\n",
    "memory.peak": "16384\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\noom_group_kill 0\n",
    "pids.current": "3\n",
    "pids.max": "100\n",
    "io.stat": "8:0 rbytes=4096 wbytes=512 rios=1 wios=2 dbytes=0 dios=0\n",
    "hugetlb.2MB.max": "max\n",
    "hugetlb.2MB.current": "0\n",
    "hugetlb.2MB.rsvd.max": "max\n",
    "cgroup.freeze": "0\n",
    "cgroup.events": "populated 1\nfrozen 0\n",
}


@pytest.fixture
def v1_cgroup(tmp_path) -> V1Manager:
    paths = {}
    for subsystem, files in V1_TREE.items():
        d = tmp_path / subsystem
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
        paths[subsystem] = str(d)
    return V1Manager(paths)


@pytest.fixture
def v2_cgroup(tmp_path) -> V2Manager:
    for name, text in V2_TREE.items():
        (tmp_path / name).write_text(text)
    return V2Manager(str(tmp_path), mount=str(tmp_path))


def test_versions(tmp_path):
    assert V1Manager({}).version == "v1"
    assert V1Manager({}, unified=V2Manager(str(tmp_path), mount=str(tmp_path))).version == "hybrid"
    assert V2Manager(str(tmp_path), mount=str(tmp_path)).version == "v2"


def test_v1_stats(v1_cgroup):
    s = v1_cgroup.stats()
    assert s.cpu.usage.total_ns == 123456789 and s.cpu.usage.per_cpu_ns == [100000000, 23456789]
    assert s.cpu.usage.user_ns == 3 * 10**9 and s.cpu.usage.system_ns == 10**9
    assert (s.cpu.throttling.periods, s.cpu.throttling.throttled_periods, s.cpu.throttling.throttled_ns) == (
        10,
        4,
        5000,
    )
    assert (s.memory.usage.usage, s.memory.usage.limit, s.memory.usage.max, s.memory.usage.failcnt) == (
        12288,
        67108864,
        20480,
        2,
    )
    assert s.memory.swap.limit == 9223372036854771712 and s.memory.kernel is None
    assert s.memory.stat["rss"] == 8192 and s.memory.oom["oom_kill"] == 3
    assert (s.pids.current, s.pids.limit) == (3, UNLIMITED)
    assert [(e.op, e.value) for e in s.blkio.service_bytes] == [("Read", 4096), ("Write", 512)]
    assert [(h.pagesize, h.usage, h.max_usage, h.failcnt, h.limit) for h in s.hugetlb] == [
        ("2MB", 2097152, 2097152, 1, 4194304)
    ]


def test_v1_metrics(v1_cgroup):
    m = metrics.collect(v1_cgroup)
    assert m.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"
    assert (m.cpu.usage.total, list(m.cpu.usage.per_cpu)) == (123456789, [100000000, 23456789])
    assert (m.cpu.usage.user, m.cpu.usage.kernel) == (3 * 10**9, 10**9)
    assert (m.cpu.throttling.periods, m.cpu.throttling.throttled_periods, m.cpu.throttling.throttled_time) == (
        10,
        4,
        5000,
    )
    assert (m.memory.cache, m.memory.rss, m.memory.pg_fault, m.memory.total_rss) == (4096, 8192, 77, 8192)
    assert m.memory.hierarchical_swap_limit == 9223372036854771712
    assert (m.memory.usage.usage, m.memory.usage.limit, m.memory.usage.max, m.memory.usage.failcnt) == (
        12288,
        67108864,
        20480,
        2,
    )
    assert m.memory.swap.limit == 9223372036854771712 and not m.memory.HasField("kernel")
    assert (m.memory_oom_control.oom_kill, m.memory_oom_control.under_oom) == (3, 0)
    assert (m.pids.current, m.pids.limit) == (3, 0)  # "max" is 0, as containerd's cgroups library reports it
    assert [(e.op, e.major, e.minor, e.value) for e in m.blkio.io_service_bytes_recursive] == [
        ("Read", 8, 0, 4096),
        ("Write", 8, 0, 512),
    ]
    assert len(m.blkio.io_serviced_recursive) == 2
    assert [(h.pagesize, h.usage, h.max, h.failcnt) for h in m.hugetlb] == [("2MB", 2097152, 2097152, 1)]


def test_v1_metrics_of_missing_controllers_leave_sections_out(tmp_path):
    (tmp_path / "pids").mkdir()
    m = metrics.collect(V1Manager({"pids": str(tmp_path / "pids")}))
    assert m.HasField("pids") and (m.pids.current, m.pids.limit) == (0, 0)
    assert not m.HasField("memory") and not m.HasField("cpu") and not m.HasField("blkio")


def test_v1_blkio_section_is_present_without_io(tmp_path):
    (tmp_path / "blkio").mkdir()
    m = metrics.collect(V1Manager({"blkio": str(tmp_path / "blkio")}))
    assert m.HasField("blkio") and not m.blkio.io_service_bytes_recursive


def test_v1_events_data(v1_cgroup):
    assert events_data(v1_cgroup.stats(), v1_cgroup.version) == {
        "memory": {
            "usage": {"usage": 12288, "limit": 67108864, "max": 20480, "failcnt": 2},
            "raw": v1_cgroup.stats().memory.stat,
        },
        "cpu": {"usage": {"total": 123456789}},
        "pids": {"current": 3, "limit": None},
    }


def test_v2_stats_and_metrics(v2_cgroup):
    s = v2_cgroup.stats()
    assert s.cpu.usage.total_ns == 1500 * 1000 and s.cpu.throttling.throttled_ns == 30 * 1000
    assert s.memory.usage.limit == UNLIMITED and s.memory.oom["oom_kill"] == 1
    m = metrics.collect(v2_cgroup)
    assert m.DESCRIPTOR.full_name == "io.containerd.cgroups.v2.Metrics"
    assert (m.pids.current, m.pids.limit) == (3, 100)
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec) == (1500, 1000, 500)
    assert (m.cpu.nr_periods, m.cpu.nr_throttled, m.cpu.throttled_usec, m.cpu.nr_bursts, m.cpu.burst_usec) == (
        8,
        2,
        30,
        1,
        7,
    )
    assert (m.memory.anon, m.memory.file, m.memory.pgfault, m.memory.workingset_refault_anon) == (4096, 8192, 12, 1)
    assert (m.memory.usage, m.memory.usage_limit, m.memory.max_usage) == (12288, UNLIMITED, 16384)
    assert (m.memory.swap_usage, m.memory.swap_limit) == (0, UNLIMITED)
    assert (m.memory_events.max, m.memory_events.oom, m.memory_events.oom_kill) == (5, 2, 1)
    assert [(u.major, u.minor, u.rbytes, u.wbytes, u.rios, u.wios) for u in m.io.usage] == [(8, 0, 4096, 512, 1, 2)]
    assert [(h.pagesize, h.current, h.max) for h in m.hugetlb] == [("2MB", 0, UNLIMITED)]


def test_v2_metrics_of_an_empty_directory_are_zeros(tmp_path):
    m = metrics.collect(V2Manager(str(tmp_path), mount=str(tmp_path)))
    assert (m.pids.current, m.pids.limit, m.memory.usage, m.cpu.usage_usec) == (0, 0, 0, 0)
    assert not m.io.usage and not m.hugetlb


def test_v2_events_data(v2_cgroup):
    assert events_data(v2_cgroup.stats(), v2_cgroup.version) == {
        "memory": {
            "usage": {"usage": 12288, "limit": None},
            "raw": {"anon": 4096, "file": 8192, "pgfault": 12, "workingset_refault_anon": 1},
        },
        "cpu": {"usage": v2_cgroup.stats().cpu.stat},
        "pids": {"current": 3, "limit": 100},
    }
    assert events_data(v2_cgroup.stats(), "v2")["cpu"]["usage"]["core_sched.force_idle_usec"] == 0


def test_oom_source_and_count(v1_cgroup, v2_cgroup, tmp_path):
    memcg = v1_cgroup.paths()["memory"]
    assert v1_cgroup.oom_source() == OOMSource(f"{memcg}/memory.oom_control", f"{memcg}/cgroup.event_control")
    assert v1_cgroup.oom_kill_count() == 3
    assert v2_cgroup.oom_source() == OOMSource(f"{v2_cgroup.path}/memory.events")
    assert v2_cgroup.oom_kill_count() == 1
    bare = tmp_path / "bare"
    bare.mkdir()
    no_memory = V2Manager(str(bare), mount=str(tmp_path))
    assert no_memory.oom_source() is None and no_memory.oom_kill_count() == 0
    hybrid = V1Manager({"pids": str(tmp_path)}, unified=v2_cgroup)
    assert hybrid.oom_source() == v2_cgroup.oom_source()


def test_freezer_state_from_files(v1_cgroup, v2_cgroup, tmp_path):
    assert v1_cgroup.freezer_state() is FreezerState.THAWED and not v1_cgroup.frozen()  # no freezer
    (tmp_path / "freezer").mkdir()
    state = tmp_path / "freezer" / "freezer.state"
    with_freezer = V1Manager({"freezer": str(tmp_path / "freezer")})
    for text, expected in (("THAWED", FreezerState.THAWED), ("FREEZING", FreezerState.FREEZING)):
        state.write_text(text + "\n")
        assert with_freezer.freezer_state() is expected
    assert with_freezer.frozen()
    assert v2_cgroup.freezer_state() is FreezerState.THAWED
    (tmp_path / "cgroup.freeze").write_text("1\n")
    assert v2_cgroup.freezer_state() is FreezerState.FREEZING and v2_cgroup.frozen()
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert v2_cgroup.freezer_state() is FreezerState.FROZEN


# ------------------------------------------------------------------------------ this host's real cgroups


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_real_v1_cgroup_stats_and_freezer():
    layout = detect_layout()
    wanted = {"cpu", "cpuacct", "memory", "pids", "freezer"}
    if not wanted <= set(layout.v1_mounts):
        pytest.fail(f"needs v1 {sorted(wanted)} controllers (this host: {layout.mode})")
    cgroup = V1Manager(
        {ss: p for ss, p in layout.resolve_v1(f"/pyoci-unit-stats-{os.getpid()}").items() if ss in wanted}
    )
    cgroup.create()
    proc = None
    try:
        # joins before exec, so the exec's work and pages are the cgroup's
        proc = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: cgroup.add(os.getpid()))
        # the cpu time a task ran in the cgroup is charged when it is next scheduled out or ticked: under load,
        # read as 0 just after the exec
        deadline = time.monotonic() + 10
        while (s := cgroup.stats()).cpu.usage.total_ns == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.pids.current == 1 and s.memory.usage.usage > 0 and s.cpu.usage.total_ns > 0
        m = metrics.collect(cgroup)
        assert m.pids.current == 1 and m.memory.usage.usage > 0 and m.HasField("memory_oom_control")
        assert cgroup.oom_kill_count() == 0
        assert cgroup.freezer_state() is FreezerState.THAWED
        cgroup.freeze()
        assert cgroup.freezer_state() is FreezerState.FROZEN and cgroup.frozen()
        cgroup.kill_all(signal.SIGKILL)  # thaws, so the kill takes effect
        proc.wait(timeout=10)
        assert cgroup.freezer_state() is FreezerState.THAWED
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        cgroup.destroy_all()


def test_real_cgroup2_freezer(sleeper):
    layout = detect_layout()
    if not layout.unified_mount:
        pytest.fail(f"needs a cgroup2 mount (this host: {layout.mode})")
    cgroup = V2Manager(layout.resolve_v2(f"/pyoci-unit-stats-{os.getpid()}"))
    cgroup.create()
    try:
        cgroup.add(sleeper.pid)
        assert cgroup.freezer_state() is FreezerState.THAWED
        cgroup.freeze()
        assert cgroup.freezer_state() is FreezerState.FROZEN
        cgroup.thaw()
        assert cgroup.freezer_state() is FreezerState.THAWED
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroup.destroy_all()
        assert not Path(cgroup.path).exists()
