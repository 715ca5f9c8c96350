"""The runtime core through the ``pyoci`` CLI, with no containerd: what a container sees, exit codes,
the lifecycle's rules, bad input leaving nothing behind, and hook ordering.

Every test checks afterwards that no state dir, cgroup or mount is left (the ``bundle`` fixture).
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from integration.harness.bundle import PYOCI


def run(bundle, script: str, **kw) -> subprocess.CompletedProcess:
    bundle.config["process"]["args"] = ["sh", "-c", script]
    bundle.write()
    return bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id, **kw)


def test_container_sees_what_the_config_says(bundle):
    c = bundle.config
    c["hostname"] = "box1"
    c["process"]["capabilities"] = {k: ["CAP_KILL", "CAP_CHOWN"] for k in ("bounding", "effective", "permitted")}
    c["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 321}]
    c["linux"]["resources"]["memory"] = {"limit": 64 * 1024 * 1024}
    result = run(
        bundle,
        "echo pid=$$; hostname; grep -E '^Cap(Eff|Bnd)' /proc/self/status; ulimit -n;"
        "cat /proc/timer_list | wc -c; ls /proc/acpi | wc -l; cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
        "ls /dev | tr '\\n' ' '; echo; readlink /dev/ptmx; touch /proc/sys/kernel/x 2>&1 | head -c 0; echo ok",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    caps = f"{(1 << 0) | (1 << 5):016x}"  # CAP_CHOWN, CAP_KILL
    assert lines[:5] == ["pid=1", "box1", f"CapEff:\t{caps}", f"CapBnd:\t{caps}", "321"]
    # a masked file reads empty (on the host it does not), a masked directory is empty, the memory limit shows
    assert os.path.getsize("/proc/timer_list") == 0 and open("/proc/timer_list").read()
    assert lines[5:8] == ["0", "0", str(64 * 1024 * 1024)]
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "stdin", "fd"):
        assert dev in lines[8].split()
    assert lines[9] == "pts/ptmx" and lines[10] == "ok"


def test_read_only_root_and_readonly_paths(bundle):
    bundle.config["root"]["readonly"] = True
    result = run(
        bundle,
        "touch /x 2>/dev/null && echo root-writable; echo 1 > /proc/sys/vm/swappiness 2>/dev/null "
        "&& echo sys-writable; touch /dev/shm/ok && echo shm-ok",
    )
    assert result.stdout == "shm-ok\n", result.stderr


def test_exit_status_propagates(bundle):
    assert run(bundle, "exit 3").returncode == 3


def test_sigkill_from_outside_gives_137(bundle):
    bundle.config["process"]["args"] = ["sleep", "100"]
    bundle.write()
    runner = subprocess.Popen([PYOCI, "--root", str(bundle.root), "run", "--bundle", str(bundle.path), bundle.id])
    try:
        for _ in range(200):
            state = bundle.pyoci("state", bundle.id)
            if state.returncode == 0 and json.loads(state.stdout)["status"] == "running":
                break
            time.sleep(0.02)
        bundle.pyoci("kill", bundle.id, "KILL", check=True)
        assert runner.wait(10) == 137
    finally:
        runner.kill()
        runner.wait()


def test_seccomp_rule_denies_mkdir_with_eperm(bundle):
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    result = run(bundle, "mkdir /tmp/nope; echo rc=$?; touch /tmp/file && echo touch-ok")
    assert "Operation not permitted" in result.stderr
    assert result.stdout == "rc=1\ntouch-ok\n"


def test_seccomp_argument_comparison(bundle):
    # deny personality(0xffffffff) only: the query form is refused, other calls are not filtered
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["kill"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 13,
                "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}],
            }
        ],
    }
    result = run(bundle, "kill -USR1 $$ 2>&1; echo rc=$?; kill -0 $$ && echo zero-ok")
    assert "Permission denied" in result.stdout and "zero-ok" in result.stdout


def test_user_namespace_maps_container_root(bundle):
    c = bundle.config
    c["linux"]["namespaces"].append({"type": "user"})
    c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    c["mounts"] = [m for m in c["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    result = run(bundle, "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[:4] == ["0", "0", "100000", "65536"]
    assert lines[4] == "65534"  # host root's files are unmapped: nobody


def test_joined_user_namespace_runs_as_its_root(bundle):
    """A user namespace joined by path (as a pod's containers join the sandbox's): the runtime becomes its
    root, as runc does, so the usual mounts (devpts gid=5, tmpfs) work; as the host's unmapped root they
    failed with EOVERFLOW."""
    holder = subprocess.Popen(["unshare", "-U", "sleep", "100"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/user") == os.readlink("/proc/self/ns/user"):
            assert time.monotonic() < deadline, "unshare did not make its user namespace"
            time.sleep(0.01)
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{holder.pid}/{name}").write_text("0 100000 65536\n")
        c = bundle.config
        c["linux"]["namespaces"].append({"type": "user", "path": f"/proc/{holder.pid}/ns/user"})
        c["mounts"] = [m for m in c["mounts"] if m["destination"] != "/sys/fs/cgroup"]
        result = run(bundle, "id -u; cat /proc/self/uid_map; ls /dev/pts/ptmx")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[:4] == ["0", "0", "100000", "65536"]
    finally:
        holder.kill()
        holder.wait()


def test_lifecycle_created_running_stopped(bundle):
    bundle.config["process"]["args"] = ["sleep", "100"]
    bundle.write()
    bundle.pyoci("create", "--bundle", str(bundle.path), "--pid-file", str(bundle.path / "pid"), bundle.id, check=True)
    state = json.loads(bundle.pyoci("state", bundle.id, check=True).stdout)
    assert state["status"] == "created" and state["pid"] == int((bundle.path / "pid").read_text())
    assert state["bundle"] == str(bundle.path) and state["id"] == bundle.id
    assert bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id).returncode == 1  # already exists
    bundle.pyoci("start", bundle.id, check=True)
    assert json.loads(bundle.pyoci("state", bundle.id).stdout)["status"] == "running"
    assert state["pid"] in json.loads(bundle.pyoci("ps", "--format", "json", bundle.id, check=True).stdout)
    refused = bundle.pyoci("delete", bundle.id)
    assert refused.returncode == 1 and "running" in refused.stderr
    assert bundle.pyoci("start", bundle.id).returncode == 1
    bundle.pyoci("pause", bundle.id, check=True)
    assert json.loads(bundle.pyoci("state", bundle.id).stdout)["status"] == "paused"
    bundle.pyoci("resume", bundle.id, check=True)
    bundle.pyoci("kill", bundle.id, "TERM", check=True)  # pid 1 without a TERM handler ignores it, as with runc
    time.sleep(0.2)
    assert json.loads(bundle.pyoci("state", bundle.id).stdout)["status"] == "running"
    bundle.pyoci("kill", bundle.id, "9", check=True)
    for _ in range(50):
        if json.loads(bundle.pyoci("state", bundle.id).stdout)["status"] == "stopped":
            break
        time.sleep(0.1)
    assert json.loads(bundle.pyoci("state", bundle.id).stdout)["status"] == "stopped"
    bundle.pyoci("delete", bundle.id, check=True)
    gone = bundle.pyoci("state", bundle.id)
    assert gone.returncode == 1 and "does not exist" in gone.stderr


def test_killing_and_deleting_a_created_container(bundle):
    bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id, check=True)
    pid = json.loads(bundle.pyoci("state", bundle.id).stdout)["pid"]
    bundle.pyoci("kill", bundle.id, "KILL", check=True)
    for _ in range(50):
        if json.loads(bundle.pyoci("state", bundle.id).stdout)["status"] == "stopped":
            break
        time.sleep(0.1)
    bundle.pyoci("delete", bundle.id, check=True)
    assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/cmdline").read() == ""


def test_exec_and_update_in_a_running_container(bundle):
    bundle.config["process"]["args"] = ["sleep", "100"]
    bundle.config["linux"]["resources"]["pids"] = {"limit": 100}
    bundle.write()
    bundle.pyoci("run", "--detach", "--bundle", str(bundle.path), bundle.id, check=True)
    result = bundle.pyoci("exec", bundle.id, "sh", "-c", "echo $$ $(hostname); exit 5")
    assert result.returncode == 5 and result.stdout.split()[1] == "pyoci"
    bundle.pyoci("update", "--pids-limit", "7", bundle.id, check=True)
    limit = bundle.pyoci("exec", bundle.id, "cat", "/sys/fs/cgroup/pids/pids.max", check=True).stdout
    assert limit.strip() == "7"


def _bad(mutate):
    def apply(bundle):
        mutate(bundle.config)
        if callable(apply.extra):
            apply.extra(bundle)

    apply.extra = None
    return apply


BAD_INPUT = {
    "memory-limit-string": (
        lambda c: c["linux"]["resources"].update(memory={"limit": "1G"}),
        "linux.resources.memory.limit: expected integer",
    ),
    "no-process-args": (lambda c: c["process"].update(args=[]), "process.args: must name the program"),
    "relative-cwd": (lambda c: c["process"].update(cwd="tmp"), "process.cwd: must be an absolute path"),
    "bad-version": (lambda c: c.update(ociVersion="9.9.9"), "ociVersion: unsupported version"),
    "missing-rootfs": (lambda c: c["root"].update(path="/nonexistent/rootfs"), "root.path: /nonexistent/rootfs"),
    "bad-namespace-path": (
        lambda c: c["linux"]["namespaces"].append({"type": "ipc", "path": "/nonexistent/ns"}),
        "linux.namespaces",
    ),
    "no-such-binary": (lambda c: c["process"].update(args=["/no/such/binary"]), '"/no/such/binary"'),
    "not-in-path": (lambda c: c["process"].update(args=["nosuchcmd"]), "executable file not found in $PATH"),
    "bind-source-missing": (
        lambda c: c["mounts"].append(
            {"destination": "/mnt", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]}
        ),
        "mount bind on /mnt",
    ),
    "bad-sysctl": (lambda c: c["linux"].update(sysctl={"net.no_such_key": "1"}), "set sysctl: net.no_such_key"),
    "failing-prestart-hook": (
        lambda c: c.update(hooks={"prestart": [{"path": "/bin/false"}]}),
        "prestart hook /bin/false: exited with status 1",
    ),
    "unknown-seccomp-arch": (
        lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}),
        "linux.seccomp.architectures[0]: unknown architecture",
    ),
    "hook-timeout": (
        lambda c: c.update(hooks={"prestart": [{"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}]}),
        "prestart hook /bin/sleep: timed out after 1s",
    ),
    "apparmor-without-apparmor": (
        lambda c: c["process"].update(apparmorProfile="docker-default"),
        "process.apparmorProfile: AppArmor is not enabled on this host",
    ),
    "selinux-without-selinux": (
        lambda c: c["process"].update(selinuxLabel="system_u:system_r:container_t:s0"),
        "process.selinuxLabel: SELinux is not enabled on this host",
    ),
    "bad-cpuset": (lambda c: c["linux"]["resources"].update(cpu={"cpus": "4096"}), "cpuset.cpus"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_clear_line_and_leaves_nothing(bundle, case):
    mutate, message = BAD_INPUT[case]
    from pyoci.runtime.security import apparmor_enabled, selinux_enabled

    if (case.startswith("apparmor") and apparmor_enabled()) or (case.startswith("selinux") and selinux_enabled()):
        pytest.skip("the host has this LSM: the config is valid here")
    mutate(bundle.config)
    bundle.write()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert bundle.leftovers() == []


def test_hooks_run_in_order_with_the_state_on_stdin(bundle, tmp_path):
    log = tmp_path / "hooks"
    log.mkdir()

    def hook(name, where="/hooks"):
        return {
            "path": "/bin/sh",
            "args": ["sh", "-c", f'read -r state; echo {name} >> {where}/order; echo "$state" > {where}/{name}.json'],
        }

    c = bundle.config
    c["mounts"].append({"destination": "/hooks", "type": "bind", "source": str(log), "options": ["rbind"]})
    c["hooks"] = {
        "prestart": [hook("prestart", log)],
        "createRuntime": [hook("createRuntime", log)],
        "createContainer": [hook("createContainer", log)],
        "startContainer": [hook("startContainer")],  # runs inside the container: its /hooks
        "poststart": [hook("poststart", log)],
        "poststop": [hook("poststop", log)],
    }
    assert run(bundle, "echo run >> /hooks/order").returncode == 0
    order = (log / "order").read_text().split()
    assert order == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "run",
        "poststart",
        "poststop",
    ] or order == ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "run", "poststop"]
    state = json.loads((log / "prestart.json").read_text())
    assert state["id"] == bundle.id and state["pid"] > 0 and state["bundle"] == str(bundle.path)


def test_features_and_version():
    out = subprocess.run([PYOCI, "features"], capture_output=True, text=True, check=True).stdout
    features = json.loads(out)
    assert "user" in features["linux"]["namespaces"] and features["linux"]["seccomp"]["enabled"]
    assert "pyoci version" in subprocess.run([PYOCI, "--version"], capture_output=True, text=True).stdout


def test_run_forwards_sigterm(bundle):
    bundle.config["process"]["args"] = ["sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done"]
    bundle.write()
    runner = subprocess.Popen([PYOCI, "--root", str(bundle.root), "run", "--bundle", str(bundle.path), bundle.id])
    try:
        deadline = time.monotonic() + 30  # forwarding starts once the container runs (slow on a loaded machine)
        while '"running"' not in bundle.pyoci("state", bundle.id).stdout:
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(0.1)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(10) == 143
    finally:
        runner.kill()
        runner.wait()


def test_the_container_gets_its_own_session_keyring(bundle):
    bundle.config["linux"]["maskedPaths"].remove("/proc/keys")  # a process sees the keyrings it possesses
    assert f"_ses.{bundle.id}" in run(bundle, "cat /proc/keys").stdout
    bundle.config["process"]["args"] = ["cat", "/proc/keys"]
    bundle.write()
    shared = bundle.pyoci("run", "--no-new-keyring", "--bundle", str(bundle.path), bundle.id)
    assert shared.returncode == 0 and f"_ses.{bundle.id}" not in shared.stdout


def test_time_namespace_offsets(bundle):
    year = 365 * 24 * 3600
    bundle.config["linux"]["namespaces"].append({"type": "time"})
    bundle.config["linux"]["timeOffsets"] = {"boottime": {"secs": year}, "monotonic": {"secs": year}}
    result = run(bundle, "cut -d. -f1 /proc/uptime")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > year
