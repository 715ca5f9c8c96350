"""The systemd cgroup driver's pure parts: unit names and slices, the unit properties, and the driver choice."""

from __future__ import annotations

import pytest

from pyoci.runtime import dbus
from pyoci.runtime.cgroups import CgroupError, Layout, open_cgroup
from pyoci.runtime.cgroups import systemd as sd
from pyoci.runtime.features import features
from pyoci.runtime.spec import CPU, Memory, Resources


@pytest.mark.parametrize(
    ("slice_name", "path"),
    [
        ("system.slice", "/system.slice"),
        ("-.slice", "/"),
        ("a-b.slice", "/a.slice/a-b.slice"),
        ("kubepods-besteffort-pod1.slice", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"),
    ],
)
def test_slices_expand_as_systemd_nests_them(slice_name, path):
    assert sd.expand_slice(slice_name) == path


@pytest.mark.parametrize("bad", ["system", ".slice", "a--b.slice", "-a.slice", "a/b.slice", "a-.slice"])
def test_invalid_slice_names_are_refused(bad):
    with pytest.raises(CgroupError, match="systemd cgroup driver: invalid slice name"):
        sd.expand_slice(bad)


@pytest.mark.parametrize(
    ("cgroups_path", "name", "slice_name", "path"),
    [
        ("system.slice:pyoci:c1", "pyoci-c1.scope", "system.slice", "/system.slice/pyoci-c1.scope"),
        (":cri-containerd:abc", "cri-containerd-abc.scope", "system.slice", "/system.slice/cri-containerd-abc.scope"),
        ("a-b.slice::c1", "c1.scope", "a-b.slice", "/a.slice/a-b.slice/c1.scope"),
        ("a.slice:x:a-c.slice", "a-c.slice", "a.slice", "/a.slice/a-c.slice"),
    ],
)
def test_cgroups_path_to_unit(cgroups_path, name, slice_name, path):
    unit = sd.parse_unit(cgroups_path)
    assert (unit.name, unit.slice, unit.path) == (name, slice_name, path)
    assert unit.is_slice == name.endswith(".slice")


def test_systemd_cgroup_flag_records_a_slice_path():
    assert sd.systemd_path("", "c1") == "system.slice:pyoci:c1"
    assert sd.systemd_path("user.slice:p:c1", "c1") == "user.slice:p:c1"
    with pytest.raises(CgroupError, match=r"systemd cgroup driver: expected cgroupsPath of the form .*'/pyoci/c1'"):
        sd.systemd_path("/pyoci/c1", "c1")


def test_the_path_form_chooses_the_driver():
    layout = Layout("unified", {}, "/sys/fs/cgroup", {"": "/"})
    manager = open_cgroup("system.slice:pyoci:c1", "c1", layout)
    assert isinstance(manager, sd.SystemdManager)
    assert manager.paths() == {"": "/sys/fs/cgroup/system.slice/pyoci-c1.scope"}
    assert manager.version == "v2"
    hybrid = Layout("hybrid", {"memory": "/sys/fs/cgroup/memory"}, "/sys/fs/cgroup/unified", {})
    assert open_cgroup("system.slice:pyoci:c1", "c1", hybrid).paths() == {
        "memory": "/sys/fs/cgroup/memory/system.slice/pyoci-c1.scope",
        "": "/sys/fs/cgroup/unified/system.slice/pyoci-c1.scope",
    }
    assert not isinstance(open_cgroup("/pyoci/c1", "c1", layout), sd.SystemdManager)
    assert not isinstance(open_cgroup("", "c1", layout), sd.SystemdManager)


@pytest.mark.parametrize(
    ("quota", "period", "usec"),
    [(50_000, 100_000, 500_000), (12_345, 100_000, 130_000), (-1, 100_000, sd.INFINITY), (100_000, 0, 1_000_000)],
)
def test_cpu_quota_per_second_is_rounded_up_to_10ms(quota, period, usec):
    assert sd.cpu_quota_per_sec(quota, period) == usec


def test_cpuset_lists_become_byte_masks():
    assert sd.range_to_bits("0") == b"\x01"
    assert sd.range_to_bits("0-1,3") == b"\x0b"
    assert sd.range_to_bits("8") == b"\x00\x01"
    assert sd.range_to_bits("") == b""
    with pytest.raises(CgroupError, match="invalid cpuset list"):
        sd.range_to_bits("3-1")


def test_unit_properties_for_v2_and_v1():
    resources = Resources(
        memory=Memory(limit=64 << 20, reservation=32 << 20, swap=128 << 20),
        cpu=CPU(shares=1024, quota=50_000, period=100_000, cpus="0-1"),
        pids_limit=-1,
        unified=(("memory.high", "50000000"),),
    )
    v2 = dict(sd.unit_properties(resources, v2=True))
    assert v2 == {
        "MemoryMax": dbus.Variant("t", 64 << 20),
        "MemoryLow": dbus.Variant("t", 32 << 20),
        "MemorySwapMax": dbus.Variant("t", 64 << 20),
        "MemoryHigh": dbus.Variant("t", 50_000_000),
        "CPUWeight": dbus.Variant("t", 39),
        "CPUQuotaPerSecUSec": dbus.Variant("t", 500_000),
        "CPUQuotaPeriodUSec": dbus.Variant("t", 100_000),
        "AllowedCPUs": dbus.Variant("ay", b"\x03"),
        "TasksMax": dbus.Variant("t", sd.INFINITY),
    }
    v1 = dict(sd.unit_properties(resources, v2=False))
    assert v1 == {
        "MemoryLimit": dbus.Variant("t", 64 << 20),
        "CPUShares": dbus.Variant("t", 1024),
        "CPUQuotaPerSecUSec": dbus.Variant("t", 500_000),
        "CPUQuotaPeriodUSec": dbus.Variant("t", 100_000),
        "TasksMax": dbus.Variant("t", sd.INFINITY),
    }
    assert sd.unit_properties(None, v2=True) == []
    # the properties marshal as StartTransientUnit's a(sv)
    data = dbus.encode_body("a(sv)", (list(v2.items()),))
    assert dbus.decode_body("a(sv)", data) == (list(v2.items()),)


def test_features_report_the_systemd_driver():
    assert features()["linux"]["cgroup"]["systemd"] is True
