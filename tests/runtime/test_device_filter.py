"""The cgroup v2 device program (eBPF), loaded and attached for real.

The kernel consults BPF_CGROUP_DEVICE programs of a task's cgroup in the default (v2) hierarchy even on a
hybrid host, so this runs here too: a child moved into a fresh cgroup2 directory with the program
attached may open /dev/null (a default device) but not /dev/kmsg, which it can open without it.
"""

import errno
import os

import pytest

from pyoci.runtime.cgroups import detect_layout
from pyoci.runtime.cgroups.devices import assemble, attach
from pyoci.runtime.spec import DeviceRule

DENY_ALL = (DeviceRule(False, "a", None, None, "rwm"),)


def _unified() -> str:
    layout = detect_layout()
    if not layout.unified_mount:
        pytest.skip("no cgroup2 mount")
    return layout.unified_mount


def _open_in(cgroup: str, path: str) -> int:
    """Open ``path`` from a child placed in ``cgroup``; the child's errno (0 on success)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            with open(f"{cgroup}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            code = exc.errno or 255
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    result = os.read(r, 1)[0]
    os.close(r)
    os.waitpid(pid, 0)
    return result


@pytest.fixture
def cgroup():
    path = os.path.join(_unified(), f"pyoci-unit-devices-{os.getpid()}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


def test_program_is_whole_instructions():
    program = assemble((*DENY_ALL, DeviceRule(True, "c", 1, 3, "rw"), DeviceRule(True, "b", None, 0, "m")))
    assert len(program) % 8 == 0 and len(program) > 8 * 8


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_attached_program_denies_what_the_rules_do_not_allow(cgroup):
    assert _open_in(cgroup, "/dev/kmsg") == 0  # allowed before
    attach(cgroup, DENY_ALL)
    assert _open_in(cgroup, "/dev/null") == 0  # a default device
    assert _open_in(cgroup, "/dev/kmsg") == errno.EPERM


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_later_rules_override_earlier_ones(cgroup):
    kmsg = os.major(os.stat("/dev/kmsg").st_rdev), os.minor(os.stat("/dev/kmsg").st_rdev)
    attach(cgroup, (*DENY_ALL, DeviceRule(True, "c", *kmsg, "r")))
    assert _open_in(cgroup, "/dev/kmsg") == 0
    sub = os.path.join(cgroup, "again")
    os.mkdir(sub)
    try:
        attach(sub, (DeviceRule(True, "c", *kmsg, "r"), DeviceRule(False, "c", *kmsg, "rwm")))
        assert _open_in(sub, "/dev/kmsg") == errno.EPERM
    finally:
        os.rmdir(sub)
