"""Attacks: a fake /proc (CVE-2019-16884/19921 class) and a cgroupsPath naming somebody else's cgroup.

A bind mount over /proc would make the runtime write oomScoreAdj (and sysctls, LSM labels) into the
attacker's files: only procfs may go on /proc, and under it only binds onto the few files lxcfs
emulates, wherever the destination's symlinks lead. A container given an existing cgroup must never
kill its processes or remove it: pyoci kills and removes only a cgroup it made.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from pyoci.runtime.cgroups import open_cgroup


def _bind(destination: str, source, option: str = "rbind") -> dict:
    return {"destination": destination, "type": "bind", "source": str(source), "options": [option]}


def _one_line_error(result, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("destination", ["/proc", "/myproc"], ids=["proc", "symlink-to-proc"])
def test_a_fake_proc_is_refused_and_nothing_is_written_into_it(bundle, tmp_path, destination):
    fake = tmp_path / "fakeproc"
    (fake / "self").mkdir(parents=True)
    (fake / "self" / "oom_score_adj").write_text("untouched")
    (bundle.path / "rootfs" / "myproc").symlink_to("/proc")
    bundle.config["mounts"].append(
        {"destination": destination, "type": "bind", "source": str(fake), "options": ["rbind"]}
    )
    bundle.config["process"]["oomScoreAdj"] = 500
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    _one_line_error(result, "only procfs may be mounted on /proc")
    assert (fake / "self" / "oom_score_adj").read_text() == "untouched"


def test_only_lxcfs_files_may_be_bound_under_proc(bundle, tmp_path):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal: 1234 kB\n")
    bundle.config["mounts"].append(
        {"destination": "/proc/meminfo", "type": "bind", "source": str(fake), "options": ["bind"]}
    )
    bundle.config["process"]["args"] = ["head", "-1", "/proc/meminfo"]
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0 and "MemTotal: 1234 kB" in result.stdout, result.stderr
    bundle.config["mounts"][-1] = {
        "destination": "/proc/sys/kernel",
        "type": "bind",
        "source": str(tmp_path),
        "options": ["rbind"],
    }
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    _one_line_error(result, "/proc/sys/kernel", "mounts under /proc are not allowed")


@pytest.fixture
def victim():
    """An existing cgroup with a sleeping process in it, which must survive everything below."""
    path = f"/pyoci-victim-{uuid.uuid4().hex[:8]}"
    cgroup = open_cgroup(path, "victim")
    cgroup.create()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        cgroup.add(sleeper.pid)
        yield path, sleeper, cgroup
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroup.destroy_all()


def _survived(sleeper, cgroup) -> None:
    assert sleeper.poll() is None, "the victim process was killed"
    assert cgroup.exists(), "the victim cgroup was removed"
    assert sleeper.pid in cgroup.pids()


def test_an_existing_cgroup_is_never_killed_or_removed(bundle, victim):
    path, sleeper, cgroup = victim
    bundle.config["linux"]["cgroupsPath"] = path
    bundle.config["process"]["args"] = ["sh", "-c", "sleep 600 & exit 3"]
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 3, result.stderr
    _survived(sleeper, cgroup)

    # a create that fails half-way
    bundle.config["process"]["args"] = ["/no/such/program"]
    bundle.write()
    assert bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id).returncode != 0
    _survived(sleeper, cgroup)

    # kill --all and delete --force of a running container
    bundle.config["process"]["args"] = ["sleep", "600"]
    bundle.write()
    bundle.pyoci("run", "-d", "--bundle", str(bundle.path), bundle.id, check=True)
    bundle.pyoci("kill", "--all", bundle.id, "KILL", check=True)
    bundle.pyoci("delete", "--force", bundle.id, check=True)
    _survived(sleeper, cgroup)


def test_root_path_resolving_to_the_host_root_is_refused(bundle):
    for root in ("/", "rootfs/../../../../../../.."):
        bundle.config["root"]["path"] = root
        bundle.write()
        result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
        _one_line_error(result, "root.path", "resolves to the host's /")
        assert not os.path.exists(bundle.root / bundle.id)
