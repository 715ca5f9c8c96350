"""Checkpoint and restore with CRIU, through the ``pyoci`` CLI and through containerd (runc's checkpoint/restore).

criu cannot run on this host's kernel (``criu check`` fails), so here these tests skip with criu's reason;
``./dev test`` runs them in the QEMU guest (Debian's 6.1 kernel), where they are the real thing: a busybox
counter writing into a host directory is dumped, its container is gone, it is restored and counts on from
where it was. In the guest a failing ``criu check`` is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from integration.harness.bundle import PYOCI, make_bundle
from pyoci.runtime.checkpoint import criu_check

IN_GUEST = os.environ.get("PYOCI_IN_GUEST") == "1"
COUNTER = "i=0; while :; do echo $i > /data/c; i=$((i+1)); sleep 0.2; done"
PYOCI_SHIM = "io.containerd.pyoci.v2"


# what criu 3.17 needs of the guest's cloud kernel, which builds these as modules (and the guest has no modprobe
# path for them): socket diag for sockets, nf_tables / conntrack netlink for a network namespace's dump (without
# nf_conntrack_netlink the conntrack dump fails with EINVAL), xt_mark for iptables-save, tun / veth for kerndat
CRIU_MODULES = (
    "unix_diag",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "netlink_diag",
    "af_packet_diag",
    "nf_tables",
    "nf_conntrack_netlink",
    "xt_mark",
    "tun",
    "veth",
)


def _load_module(name: str, index: dict[str, Path]) -> None:
    """insmod a module of the guest's kernel (and what it depends on) from the unpacked kernel package."""
    if Path("/sys/module", name).exists() or name not in index:
        return
    found = re.search(rb"depends=([\w,-]*)", index[name].read_bytes())
    for dep in filter(None, (found.group(1).decode() if found else "").split(",")):
        _load_module(dep.replace("-", "_"), index)
    subprocess.run(["busybox", "insmod", str(index[name])], check=True)


def _prepare_guest() -> None:
    """What criu needs that the guest's minimal init does not set up: the socket-diag and nf_tables modules,
    a loopback that is up, and a devpts with /dev/ptmx."""
    from integration.vm.guest import CACHE

    index = {p.name[:-3].replace("-", "_"): p for p in Path(CACHE, "kernel").glob("lib/modules/*/kernel/**/*.ko")}
    for name in CRIU_MODULES:
        _load_module(name, index)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not os.path.ismount("/dev/pts"):
        os.makedirs("/dev/pts", exist_ok=True)
        subprocess.run(["mount", "-t", "devpts", "-o", "ptmxmode=0666", "devpts", "/dev/pts"], check=True)
    try:
        os.close(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        subprocess.run(["mount", "--bind", "/dev/pts/ptmx", "/dev/ptmx"], check=True)


@pytest.fixture(scope="module", autouse=True)
def criu_works():
    if IN_GUEST:
        _prepare_guest()
    reason = criu_check()
    if reason and not IN_GUEST:
        pytest.skip(f"criu check fails on this kernel: {reason}")
    assert not reason, f"criu check fails in the guest: {reason}"


def counter(data: Path) -> int:
    for _ in range(100):
        text = (data / "c").read_text().strip() if (data / "c").exists() else ""
        if text:
            return int(text)
        time.sleep(0.1)
    raise AssertionError(f"the counter never wrote {data / 'c'}")


def first_count_after_reset(data: Path, timeout: float = 120) -> int:
    """Overwrite the counter's file, then the first value the counter writes into it."""
    (data / "c").write_text("reset\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (data / "c").read_text().strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.1)
    raise AssertionError(f"the counter wrote nothing into {data / 'c'} for {timeout} s")


def wait_counter_above(data: Path, value: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = counter(data)
        if now > value:
            return now
        time.sleep(0.2)
    raise AssertionError(f"the counter stayed at {value} for {timeout} s")


def pyoci(bundle, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI with stdin on /dev/null and output in files (a detached container keeps its stdio: a pipe would
    hold us until it exits, and criu must find them again at restore); its errors are read from its --log file.
    The guest runs Python 15-45x slower than the host: a generous timeout."""
    log, out = bundle.path.parent / "pyoci.log", bundle.path.parent / "pyoci.out"
    log.unlink(missing_ok=True)
    with open(out, "w") as stdout:
        result = subprocess.run(
            [PYOCI, "--root", str(bundle.root), "--log", str(log), *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    result.stdout = out.read_text()
    result.stderr = log.read_text() if log.exists() else ""
    return result


def state(bundle) -> dict:
    result = pyoci(bundle, "state", bundle.id)
    return json.loads(result.stdout) if result.returncode == 0 else {"status": "absent", "error": result.stderr}


@pytest.fixture
def bundle(request):
    """conftest's bundle, with this file's slow-guest timeouts: afterwards its container is deleted and the test
    fails if any state dir, cgroup or mount of it is left."""
    base = tempfile.mkdtemp(prefix="pyoci-bundle-", dir="/tmp")
    os.chmod(base, 0o755)
    b = make_bundle(Path(base) / "bundle", request.node.name[:50], ["true"])
    yield b
    pyoci(b, "delete", "--force", b.id)
    leftovers = b.leftovers()
    shutil.rmtree(base, ignore_errors=True)
    assert not leftovers, f"left behind: {leftovers}"


@pytest.fixture
def running_counter(bundle, tmp_path):
    data = Path(bundle.path.parent) / "data"
    data.mkdir()
    bundle.config["process"]["args"] = ["sh", "-c", COUNTER]
    bundle.config["mounts"].append({"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind"]})
    bundle.write()
    result = pyoci(bundle, "run", "-d", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    wait_counter_above(data, 2)
    return data


def test_checkpoint_then_restore_continues_the_counter(bundle, running_counter):
    data, images = running_counter, bundle.path.parent / "images"
    result = pyoci(bundle, "checkpoint", "--image-path", str(images), bundle.id)
    assert result.returncode == 0, result.stderr
    assert state(bundle)["status"] == "absent"  # the container is gone
    dumped = counter(data)
    time.sleep(1)
    assert counter(data) == dumped  # nothing counts any more
    (data / "c").write_text("reset\n")
    result = pyoci(bundle, "restore", "-d", "--image-path", str(images), "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    restored = state(bundle)
    assert restored["status"] == "running" and restored["pid"] > 0
    assert first_count_after_reset(data) >= dumped  # counts on from where it was, not from 0
    assert pyoci(bundle, "kill", bundle.id, "KILL").returncode == 0
    deadline = time.monotonic() + 120
    while state(bundle)["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state(bundle)["status"] == "stopped"
    assert pyoci(bundle, "delete", bundle.id).returncode == 0


def test_leave_running_keeps_counting_and_a_criu_failure_names_its_log(bundle, running_counter):
    data, images = running_counter, bundle.path.parent / "images"
    result = pyoci(bundle, "checkpoint", "--leave-running", "--image-path", str(images), bundle.id)
    assert result.returncode == 0, result.stderr
    assert state(bundle)["status"] == "running"
    wait_counter_above(data, counter(data))
    assert (images / "inventory.img").exists() and (images / "dump.log").exists()
    # a bind mount criu is not told about (the stored config no longer names /data): criu meets an external
    # mount it cannot dump, and the error names its log and quotes criu's errors
    config = json.loads((bundle.root / bundle.id / "config.json").read_text())
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/data"]
    (bundle.root / bundle.id / "config.json").write_text(json.dumps(config))
    failed = bundle.path.parent / "failed"
    result = pyoci(bundle, "checkpoint", "--image-path", str(failed), bundle.id)
    assert result.returncode == 1
    assert f"log {failed}/dump.log" in result.stderr and "Error" in result.stderr, result.stderr
    assert state(bundle)["status"] == "running"  # a failed dump leaves it running


def _console_receiver(path: str) -> list[int]:
    got: list[int] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def accept():
        conn, _ = server.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
            got.extend(fds)
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return got


def test_terminal_container_is_refused_clearly(bundle):
    bundle.config["process"]["terminal"] = True
    bundle.config["process"]["args"] = ["sleep", "1000"]
    bundle.write()
    sock = str(bundle.path.parent / "console.sock")
    masters = _console_receiver(sock)
    result = pyoci(bundle, "run", "-d", "--console-socket", sock, "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    try:
        result = pyoci(bundle, "checkpoint", "--image-path", str(bundle.path.parent / "images"), bundle.id)
        assert result.returncode == 1
        assert "terminal" in result.stderr and "not supported" in result.stderr, result.stderr
        assert state(bundle)["status"] == "running"
    finally:
        for fd in masters:
            os.close(fd)


# ------------------------------------------------------------------------------------- through containerd


def test_ctr_checkpoint_and_restore(containerd, ctr, busybox_image, container_id, tmp_path):
    """containerd 1.6's ctr: ``ctr containers checkpoint --task`` (the task is paused, dumped with criu while it
    keeps running, resumed) makes a checkpoint image; ``ctr containers restore --live`` creates the container and
    a task from it (CreateTaskRequest.checkpoint), whose Start has criu restore it."""
    data = Path(tmp_path) / "data"
    data.mkdir()
    mount = f"type=bind,src={data},dst=/data,options=rbind:rw"
    run = ("run", "-d", "--runtime", PYOCI_SHIM, "--mount", mount, busybox_image, container_id, "sh", "-c", COUNTER)
    ctr(*run, timeout=600)  # a shim start in a loaded TCG guest took more than ctr's default 60 s
    ctr.wait_task_status(container_id, "RUNNING", timeout=120)
    before = wait_counter_above(data, 5)
    ref = f"checkpoint/{container_id}:1"
    ctr("containers", "checkpoint", "--task", container_id, ref, timeout=600)
    assert ctr.task_status(container_id) == "RUNNING"  # checkpointed, resumed, still counting
    ctr.remove(container_id, timeout=300)  # with the slow guest's patience
    try:
        # not a TTY: ctr creates the task from the checkpoint, starts it (criu restores it) and returns
        restored = ctr("containers", "restore", "--live", container_id, ref, timeout=600, check=False)
        assert restored.returncode == 0, _diagnostics(containerd, restored.stdout + restored.stderr)
        assert ctr.task_status(container_id) == "RUNNING", _diagnostics(containerd, ctr("tasks", "list").stdout)
        assert first_count_after_reset(data) >= before  # counts on from the checkpoint, not from 0
        ctr("tasks", "kill", "-s", "SIGKILL", container_id, timeout=120)
        ctr.wait_task_status(container_id, "STOPPED", timeout=120)
    finally:
        ctr.remove(container_id, timeout=300)  # with the slow guest's patience
        ctr("images", "remove", ref, check=False, timeout=300)


def _diagnostics(containerd, what: str) -> str:
    """What a failed restore through containerd left to read: ctr's words, criu's restore logs, containerd's log."""
    parts = [what]
    for log in sorted(containerd.state.glob("**/criu-work/*.log")):
        parts.append(f"--- {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    parts.append("--- containerd log:\n" + containerd.log_tail(60))
    return "\n".join(parts)
