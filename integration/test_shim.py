"""containerd-shim-pyoci-v2 through the real containerd of the harness.

The scenarios that must behave like containerd's runc shim run against both runtimes (``runtime``
parameter): the runc shim is the reference, pyoci must give the same answers.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from integration.harness.containerd import mounts_under
from integration.harness.ctr import EventRecorder, assert_oom_then_exit
from pyoci.shim.start import socket_address

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
BOTH = pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])


def bundle_dir(containerd, ctr, cid: str) -> Path:
    return containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / cid


def cgroup_dirs(namespace: str, cid: str) -> list[str]:
    found = []
    for root in Path("/sys/fs/cgroup").iterdir():
        leaf = root / namespace / cid
        if leaf.exists():
            found.append(str(leaf))
    return found


def pyoci_shims() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"containerd-shim-pyoci-v2") or b"containerd-shim-pyoci-v2" in argv0:
                pids.append(int(entry))
    return pids


def assert_nothing_left(containerd, ctr, cid: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = []
        if cid in ctr("containers", "list", "--quiet").stdout.split():
            left.append("container record")
        left += [f"cgroup {d}" for d in cgroup_dirs(ctr.namespace, cid)]
        left += [f"mount {m}" for m in mounts_under(bundle_dir(containerd, ctr, cid))]
        left += [f"shim {pid}" for pid in pyoci_shims() if _shim_serves(pid, cid)]
        sock = socket_address(containerd.address, ctr.namespace, cid).removeprefix("unix://")
        left += [f"socket {p}" for p in (sock, sock + ".lock") if os.path.exists(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"left behind: {left}"


def _shim_serves(pid: int, cid: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return cid.encode() in argv


@pytest.fixture
def run(ctr, busybox_image, container_id):
    def run(runtime: str, *args: str, check: bool = False, timeout: float = 60, **kw):
        *options, command = args if args and isinstance(args[-1], list) else (*args, [])
        return ctr(
            "run",
            "--runtime",
            runtime,
            *options,
            busybox_image,
            container_id,
            *command,
            check=check,
            timeout=timeout,
            **kw,
        )

    return run


def test_echo_hello(run, containerd, ctr, container_id):
    result = run(PYOCI, "--rm", ["echo", "hello"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\n", "")
    assert_nothing_left(containerd, ctr, container_id)


@BOTH
def test_exit_status(run, runtime):
    assert run(runtime, "--rm", ["sh", "-c", "exit 3"]).returncode == 3


@BOTH
def test_sigkill_from_outside_gives_137(ctr, busybox_image, container_id, runtime):
    run = ("run", "--runtime", runtime, "--rm", busybox_image, container_id, "sh", "-c", "kill -9 $$; sleep 1000")
    with ctr.background(*run) as runner:
        ctr.wait_task_status(container_id, "RUNNING")
        time.sleep(0.2)
        assert ctr.task_status(container_id) == "RUNNING"  # kill -9 $$ inside: a pid-1 shell ignores it
        ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
        assert runner.wait(20) == 137


def test_missing_binary_is_a_clear_error_and_leaves_nothing(run, containerd, ctr, container_id):
    result = run(PYOCI, "--rm", ["/no/such/binary"])
    assert result.returncode != 0
    assert 'exec: "/no/such/binary"' in result.stderr and "no such file" in result.stderr.lower()
    ctr("containers", "delete", container_id, check=False)  # ctr leaves the container record on a failed create
    assert_nothing_left(containerd, ctr, container_id)


@BOTH
def test_detached_task_exec_ps_kill_remove(run, ctr, containerd, container_id, runtime):
    recorder = EventRecorder(ctr)
    run(runtime, "-d", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], check=True)
    ctr.wait_task_status(container_id, "RUNNING")
    ps = ctr("tasks", "ps", container_id).stdout.splitlines()[1:]
    assert len(ps) == 3
    result = ctr(
        "tasks", "exec", "--exec-id", "e1", container_id, "sh", "-c", "echo out; echo err >&2; exit 5", check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (5, "out\n", "err\n")
    result = ctr("tasks", "exec", "--exec-id", "e2", container_id, "cat", input="x\n")
    assert result.stdout == "x\n"
    ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    ctr.wait_task_status(container_id, "STOPPED")
    ctr("tasks", "delete", container_id)
    ctr("containers", "delete", container_id)
    events = recorder.stop(wait_for=("/tasks/delete", container_id))
    assert_valid_event_order(
        events, container_id, exec_ids=["e1", "e2"], init_status=137, require_delete=runtime == PYOCI
    )
    exits = {e.data.get("id"): e.data.get("exit_status", 0) for e in events if e.topic == "/tasks/exit"}
    assert exits == {"e1": 5, "e2": 0, container_id: 137}
    if runtime == PYOCI:
        assert_nothing_left(containerd, ctr, container_id)


def assert_valid_event_order(events, cid: str, exec_ids: list[str], init_status: int, require_delete=True) -> None:
    mine = [e for e in events if e.data.get("container_id") == cid]
    topics = [e.topic for e in mine]
    if not require_delete and "/tasks/delete" not in topics:
        topics.append("/tasks/delete")  # (the runc reference on containerd 2.1 sometimes never sends it)
    assert "/tasks/delete" in topics, topics
    first = {t: topics.index(t) for t in set(topics)}
    assert first["/tasks/create"] < first["/tasks/start"] < first["/tasks/delete"], topics
    init_exit = next(i for i, e in enumerate(mine) if e.topic == "/tasks/exit" and e.data.get("id") == cid)
    assert first["/tasks/start"] < init_exit < first["/tasks/delete"], topics
    assert mine[init_exit].data.get("exit_status") == init_status
    create = mine[first["/tasks/create"]].data
    start = mine[first["/tasks/start"]].data
    assert create["pid"] == start["pid"] == mine[init_exit].data["pid"]
    for exec_id in exec_ids:

        def at(topic, exec_id=exec_id):
            return next(
                i
                for i, e in enumerate(mine)
                if e.topic == topic and (e.data.get("exec_id") == exec_id or e.data.get("id") == exec_id)
            )

        added, started, ended = at("/tasks/exec-added"), at("/tasks/exec-started"), at("/tasks/exit")
        assert first["/tasks/start"] < added < started < ended < init_exit, topics
        assert mine[started].data["pid"] == mine[ended].data["pid"]


@BOTH
def test_sigterm_to_a_shell_with_a_trap_exits_143(ctr, busybox_image, container_id, runtime):
    trap = "trap 'exit 143' TERM; while :; do sleep 0.1; done"
    with ctr.background("run", "--runtime", runtime, "--rm", busybox_image, container_id, "sh", "-c", trap) as runner:
        ctr.wait_task_status(container_id, "RUNNING")
        time.sleep(0.3)
        ctr("tasks", "kill", "--signal", "SIGTERM", container_id)
        assert runner.wait(20) == 143


def test_paused_task_refuses_exec_and_resumes(run, ctr, container_id):
    recorder = EventRecorder(ctr)
    run(PYOCI, "-d", ["sleep", "1000"], check=True)
    ctr.wait_task_status(container_id, "RUNNING")
    ctr("tasks", "pause", container_id)
    assert ctr.task_status(container_id) == "PAUSED"
    refused = ctr("tasks", "exec", "--exec-id", "p1", container_id, "true", check=False)
    assert refused.returncode != 0 and "cannot exec in a paused state" in refused.stderr
    ctr("tasks", "resume", container_id)
    assert ctr.task_status(container_id) == "RUNNING"
    ctr("tasks", "pause", container_id)
    ctr("tasks", "kill", "--signal", "SIGKILL", container_id)  # delivered once thawed, as with runc
    ctr.wait_task_status(container_id, "STOPPED")
    events = recorder.stop(wait_for=("/tasks/exit", container_id))
    topics = [e.topic for e in events if e.data.get("container_id") == container_id]
    assert topics.count("/tasks/paused") == 2 and topics.count("/tasks/resumed") == 1


def test_errors_carry_status_codes(run, ctr, container_id):
    run(PYOCI, "-d", ["sleep", "1000"], check=True)
    ctr.wait_task_status(container_id, "RUNNING")
    refused = ctr("tasks", "delete", container_id, check=False)
    assert refused.returncode != 0 and "running" in refused.stderr
    ctr("tasks", "exec", "--exec-id", "d1", "-d", container_id, "sleep", "100")
    duplicate = ctr("tasks", "exec", "--exec-id", "d1", container_id, "true", check=False)
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr
    missing = ctr("tasks", "kill", "--exec-id", "nope", container_id, check=False)
    # NotFound: ctr 1.6 prints errdefs' ": not found" suffix, 1.7+ only our message
    assert missing.returncode != 0 and ("not found" in missing.stderr or "does not exist" in missing.stderr)


def test_killed_shim_is_cleaned_up_by_delete(run, ctr, containerd, container_id):
    run(PYOCI, "-d", ["sleep", "1000"], check=True)
    ctr.wait_task_status(container_id, "RUNNING")
    bundle = bundle_dir(containerd, ctr, container_id)
    shim_pid = int((bundle / "shim.pid").read_text())
    task_pid = ctr.task_pid(container_id)
    os.kill(shim_pid, signal.SIGKILL)
    # containerd notices the closed connection and runs `containerd-shim-pyoci-v2 delete` on its own
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _dead(task_pid):
        time.sleep(0.1)
    assert _dead(task_pid), "the container's process survived its shim's cleanup"
    ctr("tasks", "delete", "--force", container_id, check=False)
    ctr("containers", "delete", container_id)
    assert_nothing_left(containerd, ctr, container_id)


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_containerd_restart_while_a_task_runs(run, ctr, containerd, container_id):
    run(PYOCI, "-d", ["sleep", "1000"], check=True)
    ctr.wait_task_status(container_id, "RUNNING")
    containerd.restart()
    ctr.wait_task_status(container_id, "RUNNING")
    ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
    ctr.wait_task_status(container_id, "STOPPED")
    ctr("tasks", "delete", container_id)
    ctr("containers", "delete", container_id)
    assert_nothing_left(containerd, ctr, container_id)


def test_shim_flags_version_and_info():
    import subprocess
    import sys

    shim = str(Path(sys.executable).parent / "containerd-shim-pyoci-v2")
    out = subprocess.run([shim, "-v"], capture_output=True, text=True, check=True).stdout
    assert "io.containerd.pyoci.v2" in out
    from pyoci.protos import containerd_types_pb2

    info = containerd_types_pb2.RuntimeInfo()
    info.ParseFromString(subprocess.run([shim, "-info"], capture_output=True, check=True).stdout)
    assert info.name == "io.containerd.pyoci.v2" and b"ociVersionMax" in info.features.value


@BOTH
def test_oom_kill_publishes_oom_then_exit_137(ctr, busybox_image, container_id, runtime):
    assert_oom_then_exit(ctr, busybox_image, container_id, runtime, "--memory-limit", "20000000")


@BOTH
def test_device_rules_deny_a_device_the_spec_does_not_allow(run, runtime):
    # ctr's default spec denies all devices but the default ones; mknod is allowed (c *:* m), opening is not
    result = run(runtime, "--rm", ["sh", "-c", "mknod /tmp/kmsg c 1 11 && head -c 1 /tmp/kmsg; echo rc=$?"])
    assert "Operation not permitted" in result.stderr and "rc=1" in result.stdout, result


def test_fifty_pause_resume_cycles_leave_no_fd_in_the_shim(run, ctr, containerd, container_id):
    run(PYOCI, "-d", ["sleep", "1000"], check=True)
    ctr.wait_task_status(container_id, "RUNNING")
    shim = int((bundle_dir(containerd, ctr, container_id) / "shim.pid").read_text())
    counts = []
    for _ in range(50):
        ctr("tasks", "pause", container_id)
        ctr("tasks", "resume", container_id)
        counts.append(len(os.listdir(f"/proc/{shim}/fd")))
    assert ctr.task_status(container_id) == "RUNNING"
    assert counts[-1] <= counts[4] + 2, f"shim fds grew: {counts}"  # a leak grows by one or more per run


@BOTH
def test_an_init_sharing_a_pid_namespace_takes_its_container_with_it(ctr, busybox_image, container_id, runtime):
    """A pod's containers join the sandbox's pid namespace: when such a container's init exits, the shim
    kills the rest of its cgroup before it publishes the exit (the kernel does not, as it would for a pid
    namespace of the container's own); the survivor used to hold the output open, delaying the exit 2 s."""
    sandbox = f"{container_id}-sb"
    try:
        ctr("run", "-d", "--runtime", runtime, busybox_image, sandbox, "sleep", "600")
        ns = f"pid:/proc/{ctr.task_pid(sandbox)}/ns/pid"
        # the init exits at once, leaving a child that holds its output open
        result = ctr(
            "run", "--rm", "--runtime", runtime, "--with-ns", ns, busybox_image, container_id,
            "sh", "-c", "sleep 600 & echo started",
        )  # fmt: skip
        assert "started" in result.stdout
        survivors = ctr("task", "exec", "--exec-id", "ps", sandbox, "ps", "-o", "pid,args").stdout
        assert survivors.count("sleep 600") == 1, f"the container's child survived its init:\n{survivors}"
    finally:
        ctr.remove(sandbox, container_id)
