"""The systemd cgroup driver for real: transient scopes made through systemd's D-Bus API.

On a host with systemd as PID 1 on pure cgroup v2 (the QEMU guest booted with ``--systemd``:
``python -m integration.vm.guest --systemd -- python -m pytest integration/test_systemd_cgroup.py``) containers
made through containerd (``ctr run --runc-systemd-cgroup``) and through ``pyoci --systemd-cgroup`` get a
``.scope`` unit that ``systemctl`` shows with the limits, live updates go through systemd, and delete removes
the unit. On a host without systemd as init (this CI machine) the driver must fail with one clear error naming
it and leave nothing behind; those tests run there, the others skip with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from integration.conftest import NAMESPACE, containerd_under_test
from integration.harness.bundle import PYOCI as PYOCI_BIN
from integration.harness.bundle import _cgroup_mounts, make_bundle
from integration.harness.containerd import Containerd, mounts_under
from integration.harness.ctr import Ctr
from integration.harness.image import IMAGE_NAME, build_busybox_image
from pyoci.protos import containerd_task_v2_pb2 as task_pb2
from pyoci.runtime.cgroups import detect_layout
from pyoci.runtime.cgroups.systemd import systemd_running
from pyoci.runtime.dbus import SYSTEMD_PRIVATE, Connection
from pyoci.ttrpc.client import Client

PYOCI = "io.containerd.pyoci.v2"
SYSTEMD_V2 = systemd_running() and detect_layout().mode == "unified"
needs_systemd = pytest.mark.skipif(
    not SYSTEMD_V2, reason="needs systemd as PID 1 on pure cgroup v2 (the guest: integration/vm/guest.py --systemd)"
)
without_systemd = pytest.mark.skipif(systemd_running(), reason="checks the error of a host without systemd as init")
DRIVER_ERROR = "systemd cgroup driver: systemd is not running as init on this host"


def start_slowly(daemon: Containerd, attempts: int = 3) -> None:
    """Start containerd with TCG's patience: the harness's readiness probe (``ctr version``, 10 s) itself timed
    out in a guest sharing 2 cores with other guests; the daemon is then still starting, so probe again."""
    try:
        daemon.start(timeout=180)
    except subprocess.TimeoutExpired:
        for attempt in range(attempts):
            try:
                daemon.wait_ready(180)
                return
            except subprocess.TimeoutExpired:
                if attempt == attempts - 1:
                    daemon.stop()
                    raise


@pytest.fixture(scope="module")
def containerd():
    """This module's own harness containerd: the session one gives containerd 20 s to start, and a loaded TCG
    guest has needed more."""
    base = Path(tempfile.mkdtemp(prefix="pyoci-it-sd-", dir=os.environ.get("PYOCI_TMP", "/tmp")))
    daemon = Containerd(base, binary=containerd_under_test())
    start_slowly(daemon)
    yield daemon
    leftovers = daemon.stop()
    if leftovers:
        pytest.fail("the systemd driver tests left these behind:\n  " + "\n  ".join(leftovers))


@pytest.fixture(scope="module")
def busybox_image(containerd) -> str:
    tar = build_busybox_image(containerd.base / "busybox.tar")
    Ctr(containerd.address, NAMESPACE, containerd.env())("images", "import", str(tar), timeout=300)
    return IMAGE_NAME


def remove_slowly(ctr: Ctr, cid: str) -> None:
    """``ctr.remove`` with TCG's patience (each runtime call of containerd's runc shim starts Python)."""
    ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False, timeout=300)
    ctr.wait_task_status(cid, "STOPPED", timeout=300)
    ctr("tasks", "delete", cid, timeout=300)
    ctr("containers", "delete", cid, timeout=300)


def scope_dirs(unit: str) -> list[Path]:
    """Every directory of ``unit`` under system.slice, in each cgroup hierarchy of this host."""
    return [Path(m) / "system.slice" / unit for m in _cgroup_mounts() if (Path(m) / "system.slice" / unit).exists()]


def systemctl(*args: str, check: bool = True) -> str:
    result = subprocess.run(["systemctl", "--no-pager", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"systemctl {' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result.stdout


def show(unit: str, prop: str) -> str:
    return systemctl("show", "-p", prop, "--value", unit).strip()


def unit_gone(unit: str) -> bool:
    return show(unit, "LoadState") == "not-found" and show(unit, "ActiveState") == "inactive"


# ------------------------------------------------------------------------------ a host without systemd (CI)


@without_systemd
def test_cli_without_systemd_fails_clearly_and_leaves_nothing(bundle):
    bundle.config["linux"]["cgroupsPath"] = ""
    bundle.write()
    result = bundle.pyoci("--systemd-cgroup", "run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 1
    assert DRIVER_ERROR in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert bundle.pyoci("state", bundle.id).returncode == 1  # no state dir
    assert scope_dirs(f"pyoci-{bundle.id}.scope") == []
    # a slice:prefix:name path chooses the driver without the flag too (containerd's SystemdCgroup = true)
    bundle.config["linux"]["cgroupsPath"] = f"system.slice:pyoci-it:{bundle.id}"
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert (result.returncode, DRIVER_ERROR in result.stderr) == (1, True), result.stderr
    assert scope_dirs(f"pyoci-it-{bundle.id}.scope") == [] and not (bundle.root / bundle.id).exists()


@without_systemd
def test_cli_flag_needs_a_slice_path(bundle):
    result = bundle.pyoci("--systemd-cgroup", "run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 1
    assert 'systemd cgroup driver: expected cgroupsPath of the form "slice:prefix:name"' in result.stderr
    assert not (bundle.root / bundle.id).exists()


def systemd_run_args(how: str, container_id: str) -> list[str]:
    """``ctr run`` options for a container under the systemd driver: the pyoci shim given a ``slice:prefix:name``
    cgroupsPath (what containerd passes with ``SystemdCgroup = true``; ctr 1.6 allows --runc-systemd-cgroup only
    with the runc shim), or containerd's runc shim running the ``pyoci`` binary with ``--systemd-cgroup``."""
    cgroup = ["--cgroup", f"system.slice:pyoci-it:{container_id}"]
    if how == "pyoci-shim":
        return ["--runtime", PYOCI, *cgroup]
    return ["--runtime", "io.containerd.runc.v2", "--runc-binary", PYOCI_BIN, "--runc-systemd-cgroup", *cgroup]


@without_systemd
@pytest.mark.parametrize("how", ["pyoci-shim", "runc-shim"])
def test_shim_without_systemd_fails_clearly_and_leaves_nothing(ctr, busybox_image, container_id, how):
    result = ctr("run", *systemd_run_args(how, container_id), busybox_image, container_id, "true", check=False)
    assert result.returncode != 0
    assert DRIVER_ERROR in result.stderr, result.stderr
    assert ctr.task_status(container_id) == ""
    assert scope_dirs(f"pyoci-it-{container_id}.scope") == []


# --------------------------------------------------------------------------- systemd as PID 1 (the guest)


async def _update(address: str, cid: str, resources: dict) -> None:
    value = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps(resources).encode(),
    )
    async with await Client.connect(address) as client:
        stub = client.stub(task_pb2.DESCRIPTOR.services_by_name["Task"])
        await stub.Update(task_pb2.UpdateTaskRequest(id=cid, resources=value), timeout=120)


@needs_systemd
def test_ctr_run_with_systemd_cgroup_makes_a_scope(ctr, containerd, busybox_image, container_id):
    unit = f"pyoci-it-{container_id}.scope"
    cgroup = Path("/sys/fs/cgroup/system.slice") / unit
    args = [*systemd_run_args("pyoci-shim", container_id), "--memory-limit", "67108864"]
    ctr("run", "-d", *args, busybox_image, container_id, "sh", "-c", "sleep 1000 & wait", timeout=300)
    ctr.wait_task_status(container_id, "RUNNING", timeout=120)
    pid = ctr.task_pid(container_id)
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/system.slice/{unit}"
    status = systemctl("status", unit)
    assert unit in status and "active (running)" in status, status
    assert show(unit, "MemoryMax") == "67108864"
    assert (show(unit, "Delegate"), show(unit, "Slice")) == ("yes", "system.slice")
    assert (cgroup / "memory.max").read_text().strip() == "67108864"
    inside = ctr("tasks", "exec", "--exec-id", "cg", container_id, "cat", "/proc/self/cgroup", timeout=120).stdout
    assert inside.strip() in ("0::/", f"0::/system.slice/{unit}")  # "0::/" in a cgroup namespace
    assert str(pid) in (cgroup / "cgroup.procs").read_text().split()

    address = (
        containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / container_id / "address"
    ).read_text()
    limits = {"memory": {"limit": 50331648}, "pids": {"limit": 20}, "cpu": {"quota": 20000, "period": 100000}}
    asyncio.run(_update(address, container_id, limits))
    assert (show(unit, "MemoryMax"), show(unit, "TasksMax")) == ("50331648", "20")
    assert show(unit, "CPUQuotaPerSecUSec") == "200ms"
    assert (cgroup / "memory.max").read_text().strip() == "50331648"
    assert (cgroup / "pids.max").read_text().strip() == "20"
    assert (cgroup / "cpu.max").read_text().strip() == "20000 100000"

    remove_slowly(ctr, container_id)
    assert unit_gone(unit) and not cgroup.exists()


@pytest.fixture
def slow_bundle(request):
    """The ``bundle`` fixture with room for TCG: every pyoci call may take minutes in the guest."""
    base = tempfile.mkdtemp(prefix="pyoci-bundle-", dir="/tmp")
    os.chmod(base, 0o755)
    b = make_bundle(Path(base) / "bundle", request.node.name[:50], ["true"])
    b.pyoci = functools.partial(b.pyoci, timeout=300)  # type: ignore[method-assign]
    yield b
    b.pyoci("delete", "--force", b.id)
    leftovers = [f"state dir {b.root / b.id}"] if (b.root / b.id).exists() else []
    leftovers += [f"mount {m}" for m in mounts_under(b.path)]
    shutil.rmtree(base, ignore_errors=True)
    assert not leftovers, f"left behind: {leftovers}"


@needs_systemd
def test_cli_systemd_cgroup_run_and_delete(slow_bundle):
    bundle = slow_bundle
    bundle.config["linux"]["cgroupsPath"] = ""
    bundle.config["linux"]["resources"] = {"pids": {"limit": 30}, "memory": {"limit": 33554432}}
    bundle.config["process"]["args"] = ["sleep", "1000"]
    bundle.write()
    unit = f"pyoci-{bundle.id}.scope"
    bundle.pyoci("--systemd-cgroup", "run", "-d", "--bundle", str(bundle.path), bundle.id, timeout=300, check=True)
    try:
        pid = json.loads(bundle.pyoci("state", bundle.id, check=True, timeout=120).stdout)["pid"]
        assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/system.slice/{unit}"
        assert (show(unit, "ActiveState"), show(unit, "TasksMax"), show(unit, "MemoryMax")) == (
            "active",
            "30",
            "33554432",
        )
        # a second container for the same unit is refused, naming the unit; the first is untouched
        bundle.config["linux"]["cgroupsPath"] = f"system.slice:pyoci:{bundle.id}"
        bundle.write()
        clash = bundle.pyoci("create", "--bundle", str(bundle.path), "clash", timeout=300)
        assert clash.returncode == 1 and f"systemd cgroup driver: unit {unit} already exists" in clash.stderr
        assert not (bundle.root / "clash").exists()
        assert show(unit, "ActiveState") == "active"
        # the private socket (runc's fallback when the bus is missing) answers too
        with Connection(SYSTEMD_PRIVATE, bus=False) as conn:
            (path,) = conn.call(
                "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                "GetUnit", "s", unit,
            )  # fmt: skip
            assert path.startswith("/org/freedesktop/systemd1/unit/")
    finally:
        bundle.pyoci("delete", "--force", bundle.id, timeout=300)
    assert unit_gone(unit) and not Path(f"/sys/fs/cgroup/system.slice/{unit}").exists()
    assert os.path.exists("/run/systemd/system")


@needs_systemd
def test_runc_shim_driving_pyoci_with_systemd_cgroup(ctr, busybox_image, container_id):
    unit = f"pyoci-it-{container_id}.scope"
    args = systemd_run_args("runc-shim", container_id)
    ctr("run", "-d", *args, busybox_image, container_id, "sleep", "1000", timeout=300)
    ctr.wait_task_status(container_id, "RUNNING", timeout=120)
    pid = ctr.task_pid(container_id)
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/system.slice/{unit}"
    assert show(unit, "ActiveState") == "active"
    remove_slowly(ctr, container_id)
    assert unit_gone(unit) and not (Path("/sys/fs/cgroup/system.slice") / unit).exists()


# ------------------------------------------------------------- the CRI plugin with SystemdCgroup = true (guest)

CRI_SLICE = "pyocicri.slice"


@pytest.fixture(scope="module")
def cri_systemd():
    """A private containerd with the CRI plugin, both handlers given ``SystemdCgroup = true``, and the offline
    pause and busybox images. Pods use the host network (the guest kernel has no bridge module loaded)."""
    from integration.conftest import containerd_under_test
    from integration.cri.config import RUNTIMES, claim_network, cri_config, write_cni_conf
    from integration.cri.conftest import _wait_ready, containerd_version
    from integration.cri.images import PAUSE_IMAGE, build_pause_image
    from integration.harness.containerd import Containerd
    from integration.harness.ctr import Ctr
    from integration.harness.image import IMAGE_NAME, build_busybox_image

    binary = containerd_under_test()
    major = containerd_version(binary)[0]
    base = Path(tempfile.mkdtemp(prefix="pyoci-cri-sd-", dir=os.environ.get("PYOCI_TMP", "/tmp")))
    network = claim_network()
    try:
        write_cni_conf(base / "cni", network, base / "ipam")
        version, extra = cri_config(major, base / "cni", PAUSE_IMAGE)
        prefix = "plugins.'io.containerd.cri.v1.runtime'" if major >= 2 else 'plugins."io.containerd.grpc.v1.cri"'
        extra += "".join(
            f"[{prefix}.containerd.runtimes.{name}.options]\n  SystemdCgroup = true\n" for name in RUNTIMES
        )
        daemon = Containerd(base, binary=binary, cri_config=extra, config_version=version)
        start_slowly(daemon)
        try:
            ctr = Ctr(daemon.address, "k8s.io", daemon.env())
            ctr("images", "import", str(build_pause_image(base / "pause.tar")), timeout=300)
            ctr("images", "import", str(build_busybox_image(base / "busybox.tar")), timeout=300)
            asyncio.run(_wait_ready(daemon.address, [PAUSE_IMAGE, IMAGE_NAME], timeout=180))
            yield daemon
        finally:
            daemon.stop()
    finally:
        network.release()


async def _cri_pod_scenario(address: str, handler: str, log_dir: Path) -> None:
    from integration.cri.client import CriClient
    from integration.cri.pods import Pod
    from pyoci.protos import cri_api_pb2 as cri

    client = CriClient(address, timeout=300)
    mib = 1024 * 1024
    name = f"sd-{handler}"
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="pyoci-cri"),
        log_directory=str(log_dir),
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=CRI_SLICE,
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption(network=cri.NODE)),
        ),
    )
    pod_id = (
        await client.call("RunPodSandbox", cri.RunPodSandboxRequest(config=config, runtime_handler=handler))
    ).pod_sandbox_id
    pod = Pod(pod_id, name, config, client, CRI_SLICE)
    sandbox_unit = f"cri-containerd-{pod_id}.scope"
    try:
        assert (show(sandbox_unit, "ActiveState"), show(sandbox_unit, "Slice")) == ("active", CRI_SLICE)
        limits = cri.LinuxContainerResources(memory_limit_in_bytes=64 * mib, cpu_period=100000, cpu_quota=20000)
        cid = await pod.start("c1", "sleep", "1000", resources=limits)
        unit = f"cri-containerd-{cid}.scope"
        pid = await pod.container_pid(cid)
        assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/{CRI_SLICE}/{unit}"
        assert (show(unit, "MemoryMax"), show(unit, "CPUQuotaPerSecUSec")) == (str(64 * mib), "200ms")
        cgroup = Path("/sys/fs/cgroup") / CRI_SLICE / unit
        assert (cgroup / "cpu.max").read_text().strip() == "20000 100000"
        update = cri.LinuxContainerResources(memory_limit_in_bytes=48 * mib, cpu_period=100000, cpu_quota=50000)
        await client.call(
            "UpdateContainerResources", cri.UpdateContainerResourcesRequest(container_id=cid, linux=update)
        )
        assert (show(unit, "MemoryMax"), show(unit, "CPUQuotaPerSecUSec")) == (str(48 * mib), "500ms")
        assert (cgroup / "memory.max").read_text().strip() == str(48 * mib)
        assert (cgroup / "cpu.max").read_text().strip() == "50000 100000"
        assert "active (running)" in systemctl("status", unit)
    finally:
        await client.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        await client.call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        client.close()
    for gone in [sandbox_unit, *(f"cri-containerd-{c}.scope" for c in pod.containers)]:
        assert unit_gone(gone), f"{gone} is left: {systemctl('status', gone, check=False)}"
        assert not (Path("/sys/fs/cgroup") / CRI_SLICE / gone).exists()


@needs_systemd
@pytest.mark.parametrize("handler", ["pyoci", "runc"])
def test_cri_pod_with_systemd_cgroup(cri_systemd, handler, tmp_path):
    asyncio.run(_cri_pod_scenario(cri_systemd.address, handler, tmp_path))
