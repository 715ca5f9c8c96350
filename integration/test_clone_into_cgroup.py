"""A container's init and exec processes start in its cgroup, with clone3(CLONE_INTO_CGROUP) and without.

With clone3 the init is created in the container's cgroup2 directory (here: hybrid's cgroup2 mount; in the
guest: the only hierarchy) and enters its cgroup namespace only then, so the namespace's root is the
container's cgroup. The same must hold on the fallbacks: ``PYOCI_NO_CLONE3`` (what a kernel without clone3
or a seccomp filter refusing it gets) and a user-namespaced container (the process in the user namespace may
not create a process in the host's cgroup, so the runtime writes it to cgroup.procs).
"""

from __future__ import annotations

import json
import os

import pytest

from pyoci.runtime.cgroups import detect_layout

MODES = ["clone3", "no-clone3", "user-namespace"]


def _lines(text: str) -> dict[str, str]:
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in text.strip().splitlines()}


@pytest.mark.parametrize("mode", MODES)
def test_init_and_exec_start_in_the_containers_cgroup(bundle, mode):
    layout = detect_layout()
    assert layout.unified_mount, "no cgroup2 mount: nothing to clone into"
    c = bundle.config
    c["process"]["args"] = ["sleep", "1000"]
    env = dict(os.environ)
    if mode == "no-clone3":
        env["PYOCI_NO_CLONE3"] = "1"
    if mode == "user-namespace":
        c["linux"]["namespaces"].append({"type": "user"})
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        c["mounts"] = [m for m in c["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    assert {"type": "cgroup"} in c["linux"]["namespaces"]
    bundle.write()
    bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id, env=env, check=True)
    pid = json.loads(bundle.pyoci("state", bundle.id, check=True).stdout)["pid"]

    # seen from the host: the init is in the container's cgroup in every hierarchy
    with open(f"/proc/{pid}/cgroup") as f:
        host = _lines(f.read())
    assert host[""] == bundle.cgroups_path, host
    if layout.mode == "hybrid":
        assert host["memory"] == bundle.cgroups_path, host

    # seen from inside: its cgroup namespace is rooted at that cgroup (entered after it was there)
    bundle.pyoci("start", bundle.id, env=env, check=True)
    inside = bundle.pyoci("exec", bundle.id, "cat", "/proc/1/cgroup", "/proc/self/cgroup", env=env, check=True)
    lines = inside.stdout.strip().splitlines()
    half = len(lines) // 2
    for text in ("\n".join(lines[:half]), "\n".join(lines[half:])):  # the init's, then the exec's own
        seen = _lines(text)
        assert seen[""] == "/", inside.stdout
        if layout.mode == "hybrid":
            assert seen["memory"] == "/", inside.stdout
