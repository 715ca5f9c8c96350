"""nerdctl scenarios, each run by nerdctl v2.1.3 and v1.7.7, with pyoci mirrored against containerd's runc shim.

nerdctl is a client nobody here wrote: it builds its own OCI specs (nerdctl v2 sends zero realtime CPU
values), sets up networking from an OCI createRuntime hook that calls nerdctl itself (and tears it down
from a postStop hook), and reads state, logs, stats and processes through containerd. Its binaries are
built by the harness (``integration/harness/nerdctl.py``); its state lives under the session's temp dir
(``integration/nerdctl_env.py``), and what its CNI plugins leave on the host is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from integration.harness.ctr import MEMORY_HOG, Ctr, EventRecorder
from integration.harness.nerdctl import VERSIONS, nerdctl_binary
from integration.nerdctl_env import Nerdctl, Network, nerdctl_env, remove_namespace_cgroups

RUNTIMES = {"pyoci": "io.containerd.pyoci.v2", "runc": "io.containerd.runc.v2"}
NAMESPACE = f"pyoci-nd-{os.getpid()}"  # one per session: the CNI rules it leaves are found by it
LONG_RUNNING = ("sh", "-c", 'echo started; trap "echo stopping; exit 0" TERM; while :; do sleep 0.1; done')


@pytest.fixture(scope="session")
def nerdctl_network(containerd, busybox_image):
    ctr = Ctr(containerd.address, NAMESPACE, containerd.env())
    ctr("images", "import", str(containerd.base / "busybox.tar"))
    network = Network(containerd.base / "nerdctl", NAMESPACE)
    network.setup()
    created = EventRecorder(ctr)  # every container of the session, to find the CNI chains named after it
    try:
        yield network
    finally:
        events = created.stop()
        network.cleanup(e.data["id"] for e in events if e.topic == "/containers/create")
        left = remove_namespace_cgroups(NAMESPACE)
    assert not left, f"cgroups left behind: {left}"


@pytest.fixture(scope="session", params=VERSIONS)
def nerdctl(request, containerd, nerdctl_network) -> Nerdctl:
    version = request.param
    base = containerd.base / "nerdctl" / version
    base.mkdir(parents=True, exist_ok=True)
    env = {**nerdctl_env(base), "PATH": containerd.env()["PATH"]}
    return Nerdctl(nerdctl_binary(version), version, containerd.address, NAMESPACE, base / "data", nerdctl_network, env)


@pytest.fixture(params=list(RUNTIMES))
def runtime(request) -> str:
    return RUNTIMES[request.param]


class Scenario:
    """One test's nerdctl + runtime, with container names of its own that are force-removed afterwards."""

    def __init__(self, nerdctl: Nerdctl, runtime: str, image: str, prefix: str) -> None:
        self.nerdctl, self.runtime, self.image, self.prefix = nerdctl, runtime, image, prefix
        self.names: list[str] = []

    def name(self, suffix: str = "c") -> str:
        name = f"{self.prefix}-{suffix}"
        self.names.append(name)
        return name

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.nerdctl("run", "--runtime", self.runtime, *args, check=check, timeout=timeout)

    def __call__(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.nerdctl(*args, **kwargs)

    def cleanup(self) -> None:
        for name in self.names:
            self.nerdctl("rm", "-f", name, check=False)


@pytest.fixture
def nd(request, nerdctl, runtime, busybox_image):
    short = re.sub(r"[^a-z0-9]+", "-", request.node.originalname.removeprefix("test_").lower())[:30].strip("-")
    kind = "p" if "pyoci" in runtime else "r"
    scenario = Scenario(nerdctl, runtime, busybox_image, f"{short}-{nerdctl.version.replace('.', '')}-{kind}")
    yield scenario
    scenario.cleanup()


def wait_for(predicate, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status(nd: Scenario, name: str) -> str:
    return nd.nerdctl.inspect(name)["State"]["Status"]


def cgroup_file(pid: int, controller: str, name: str) -> Path:
    """A v1 controller's file for the cgroup that ``pid`` is in (this host is hybrid: v1 controllers)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}") / name
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


# ---------------------------------------------------------------------------------------------- scenarios


def test_run_rm_output_and_exit_code(nd):
    name = nd.name()
    result = nd.run("--rm", "--name", name, nd.image, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (result.returncode, result.stdout) == (3, "out\n"), result
    assert "err\n" in result.stderr
    assert name not in nd("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_net_none_has_no_interface_but_loopback(nd):
    result = nd.run("--rm", "--net", "none", nd.image, "sh", "-c", "ls /sys/class/net")
    assert result.stdout.split() == ["lo"], result


def test_loopback_is_up_in_a_new_network_namespace(nd):
    result = nd.run("--rm", "--net", "none", nd.image, "ip", "addr", "show", "lo")
    assert "inet 127.0.0.1/8" in result.stdout and "UP" in result.stdout.split("\n")[0], result.stdout


def test_default_bridge_network_set_up_and_torn_down_by_nerdctl_hooks(nd):
    network = nd.nerdctl.network
    name = nd.name()
    script = f"ip -4 addr show eth0; ip route; ping -c 1 -W 5 {network.gateway} >/dev/null && echo gateway-reached"
    result = nd.run("--rm", "--name", name, nd.image, "sh", "-c", script)
    address = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/24", result.stdout)
    assert address and address.group(1).startswith(str(network.subnet.network_address)[:-1]), result.stdout
    assert f"default via {network.gateway}" in result.stdout and "gateway-reached" in result.stdout, result.stdout
    # the createRuntime hook (nerdctl internal oci-hook) gave it the address; the postStop hook gave it back
    wait_for(lambda: address.group(1) not in network.leases(), 10, what=f"{address.group(1)} released by postStop")


def test_detached_logs_exec_stop_rm(nd):
    name = nd.name()
    nd.run("-d", "--name", name, nd.image, *LONG_RUNNING)
    wait_for(lambda: "started" in nd("logs", name).stdout, what="the container's first output in `logs`")
    assert status(nd, name) == "running"
    assert nd("exec", name, "sh", "-c", "echo $((6 * 7)); cat /etc/hostname").stdout.split()[0] == "42"
    exec_failed = nd("exec", name, "sh", "-c", "exit 7", check=False)  # nerdctl exits 1 and names the code
    assert exec_failed.returncode != 0 and "exit code 7" in exec_failed.stderr, exec_failed
    nd("stop", "-t", "10", name)
    state = nd.nerdctl.inspect(name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    assert nd("logs", name).stdout.split() == ["started", "stopping"]
    nd("rm", name)
    assert name not in nd("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_interactive_terminal(nd):
    master, slave = pty.openpty()
    argv = nd.nerdctl.argv("run", "--runtime", nd.runtime, "-it", "--rm", "--name", nd.name(), nd.image, "sh")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=nd.nerdctl.env, start_new_session=True)
    os.close(slave)
    output = b""
    try:
        sent = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the last holder of the slave side is gone
                    break
                if not chunk:
                    break
                output += chunk
            if not sent and b"#" in output:  # the shell's prompt
                os.write(master, b"tty; echo $((40 + 2)); exit 5\r")
                sent = True
            if proc.poll() is not None and not ready:
                break
        returncode = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = output.decode(errors="replace").replace("\r", "").splitlines()
    assert returncode == 5, lines
    assert "/dev/pts/0" in lines and "42" in lines, lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_published_port_reaches_busybox_httpd(nd):
    port = free_port()
    name = nd.name()
    serve = "mkdir -p /www && echo hello-from-httpd > /www/index.html && exec httpd -f -p 80 -h /www"
    nd.run("-d", "--name", name, "-p", f"127.0.0.1:{port}:80", nd.image, "sh", "-c", serve)

    def fetch() -> str:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return response.read().decode()
        return ""

    assert wait_for(fetch, 20, 0.2, f"httpd through 127.0.0.1:{port}") == "hello-from-httpd\n"
    assert f"127.0.0.1:{port}->80/tcp" in nd("ps", "--format", "{{.Ports}}", "--filter", f"name={name}").stdout
    nd("rm", "-f", name)


def test_memory_limit_oom_kill(nd, containerd):
    """Exit 137 and the OOM kill seen by containerd (/tasks/oom before /tasks/exit). Neither nerdctl version
    shows OOMKilled in `inspect` (its dockercompat State has it as a TODO), so containerd's events are checked."""
    name = nd.name()
    recorder = EventRecorder(Ctr(containerd.address, NAMESPACE, containerd.env()))
    cid = ""
    try:
        hog = ("sh", "-c", MEMORY_HOG)
        result = nd.run("--name", name, "--net", "none", "--memory", "32m", nd.image, *hog, check=False)
        state = nd.nerdctl.inspect(name)
        cid = state["Id"]
    finally:
        events = recorder.stop(wait_for=("/tasks/exit", cid) if cid else None, timeout=30)
    assert result.returncode == 137, result
    assert (state["State"]["Status"], state["State"]["ExitCode"]) == ("exited", 137), state["State"]
    topics = [e.topic for e in events if e.data.get("container_id") == cid]
    assert "/tasks/oom" in topics and "/tasks/exit" in topics, topics
    assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), topics


def test_stats_no_stream(nd):
    name = nd.name()
    nd.run("-d", "--name", name, "--net", "none", "--memory", "64m", nd.image, *LONG_RUNNING)
    wait_for(lambda: status(nd, name) == "running", what="running")
    out = nd("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.PIDs}}", name).stdout
    fields = out.split()
    assert len(out.splitlines()) == 1 and name.startswith(fields[0]), out  # nerdctl v1 cuts the name to 12
    assert re.fullmatch(r"[\d.]+[KMG]?i?B", fields[1]) and fields[3] == "64MiB", out  # "<usage> / 64MiB"
    assert int(fields[4]) >= 2, out  # sh and its sleep


def test_pause_unpause(nd):
    name = nd.name()
    nd.run("-d", "--name", name, "--net", "none", nd.image, *LONG_RUNNING)
    nd("pause", name)
    assert status(nd, name) == "paused"
    before = nd("logs", name).stdout
    pid = nd.nerdctl.inspect(name)["State"]["Pid"]
    assert cgroup_file(pid, "freezer", "freezer.state").read_text().strip() == "FROZEN"
    nd("unpause", name)
    assert status(nd, name) == "running"
    assert nd("exec", name, "echo", "alive").stdout == "alive\n"
    assert before == nd("logs", name).stdout


def test_top_lists_the_container_processes(nd):
    name = nd.name()
    nd.run("-d", "--name", name, "--net", "none", nd.image, "sh", "-c", "sleep 1000 & exec sleep 1001")

    def listing() -> str:
        out = nd("top", name).stdout
        return out if "sleep 1000" in out else ""

    out = wait_for(listing, what="both sleeps in `top`")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["UID", "PID", "PPID"], out
    commands = sorted(row.split(None, 7)[-1] for row in rows)
    assert commands == ["sleep 1000", "sleep 1001"], out


def test_update_memory_limit_reaches_the_cgroup(nd):
    name = nd.name()
    nd.run("-d", "--name", name, "--net", "none", "--memory", "64m", nd.image, *LONG_RUNNING)
    pid = nd.nerdctl.inspect(name)["State"]["Pid"]
    limit = cgroup_file(pid, "memory", "memory.limit_in_bytes")
    assert int(limit.read_text()) == 64 << 20
    nd("update", "--memory", "96m", "--memory-swap", "192m", name)
    assert int(limit.read_text()) == 96 << 20
    assert nd("exec", name, "echo", "still-running").stdout == "still-running\n"
