"""The container security context through the CRI: users and groups, read-only rootfs, capabilities, privileged,
seccomp (RuntimeDefault, Unconfined, Localhost), no_new_privs, masked and read-only paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from integration.cri.pods import caps, status_field
from pyoci.protos import cri_api_pb2 as cri

CAP = {"CHOWN": 0, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21}
Profile = cri.SecurityProfile


def _status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text()


async def _run(pods, name: str, security: cri.LinuxContainerSecurityContext, privileged: bool = False):
    pod = await pods.run(name, privileged=privileged)
    cid = await pod.start("a", "sleep", "1000", security=security)
    return pod, cid, _status(await pod.container_pid(cid))


async def test_run_as_user_group_and_supplemental_groups(pods):
    security = cri.LinuxContainerSecurityContext(
        run_as_user=cri.Int64Value(value=1000),
        run_as_group=cri.Int64Value(value=2000),
        supplemental_groups=[3000, 4000],
    )
    pod, cid, status = await _run(pods, "users", security)
    assert status_field(status, "Uid").split() == ["1000"] * 4
    assert status_field(status, "Gid").split() == ["2000"] * 4
    assert {"3000", "4000"} <= set(status_field(status, "Groups").split())
    assert (await pod.sh(cid, "id -u; id -g")).split() == ["1000", "2000"]  # execs run as the same user


async def test_read_only_rootfs(pods):
    pod, cid, _ = await _run(pods, "rorootfs", cri.LinuxContainerSecurityContext(readonly_rootfs=True))
    result = await pod.exec(cid, "touch", "/newfile")
    assert result.exit_code != 0 and b"Read-only file system" in result.stderr, result
    await pod.sh(cid, "touch /dev/shm/ok")  # the pod's /dev/shm stays writable


async def test_capabilities_add_and_drop(pods):
    security = cri.LinuxContainerSecurityContext(
        capabilities=cri.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["CHOWN", "NET_RAW"])
    )
    _, _, status = await _run(pods, "caps", security)
    effective = caps(status)
    assert effective & (1 << CAP["NET_ADMIN"]), hex(effective)
    assert not effective & (1 << CAP["CHOWN"] | 1 << CAP["NET_RAW"]), hex(effective)
    assert not effective & (1 << CAP["SYS_ADMIN"]), hex(effective)
    assert caps(status, "CapBnd") == caps(status, "CapPrm") == effective


async def test_capabilities_drop_all_add_one(pods):
    security = cri.LinuxContainerSecurityContext(
        capabilities=cri.Capability(add_capabilities=["NET_BIND_SERVICE"], drop_capabilities=["ALL"])
    )
    _, _, status = await _run(pods, "caps-all", security)
    assert caps(status) == caps(status, "CapBnd") == 1 << CAP["NET_BIND_SERVICE"]


async def test_privileged_container(pods):
    _, _, status = await _run(pods, "privileged", cri.LinuxContainerSecurityContext(privileged=True), privileged=True)
    pod = pods.pods[-1]
    cid = pod.containers[-1]
    assert caps(status) == caps(_status("self"), "CapBnd")  # everything the host's root may have
    assert status_field(status, "Seccomp") == "0"
    assert await pod.sh(cid, "test -c /dev/loop-control && echo host-devices") == "host-devices"
    assert int(await pod.sh(cid, "wc -c < /proc/timer_list")) > 0  # nothing masked
    assert await pod.sh(cid, "ls /sys/firmware")  # nor hidden


@pytest.mark.parametrize(
    ("profile", "mode"),
    [(Profile.RuntimeDefault, "2"), (Profile.Unconfined, "0")],
    ids=["runtime-default", "unconfined"],
)
async def test_seccomp_profile(pods, profile, mode):
    security = cri.LinuxContainerSecurityContext(seccomp=Profile(profile_type=profile))
    pod, cid, status = await _run(pods, "seccomp", security)
    assert status_field(status, "Seccomp") == mode
    # the default profile denies e.g. unshare of a user namespace... as EPERM; unconfined allows it
    result = await pod.exec(cid, "unshare", "-U", "true")
    assert (result.exit_code == 0) is (profile == Profile.Unconfined), result


async def test_seccomp_localhost_profile(pods, cri_node):
    path = cri_node.containerd.base / "seccomp-deny-mkdir.json"
    path.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            }
        )
    )
    security = cri.LinuxContainerSecurityContext(
        seccomp=Profile(profile_type=Profile.Localhost, localhost_ref=str(path))
    )
    pod, cid, status = await _run(pods, "seccomp-local", security)
    assert status_field(status, "Seccomp") == "2"
    result = await pod.exec(cid, "mkdir", "/tmp/d")
    assert result.exit_code != 0 and b"Operation not permitted" in result.stderr, result
    await pod.sh(cid, "touch /tmp/file")


@pytest.mark.parametrize("no_new_privs", [True, False])
async def test_no_new_privs(pods, no_new_privs):
    security = cri.LinuxContainerSecurityContext(no_new_privs=no_new_privs)
    _, _, status = await _run(pods, "nnp", security)
    assert status_field(status, "NoNewPrivs") == ("1" if no_new_privs else "0")


async def test_masked_and_readonly_paths(pods):
    security = cri.LinuxContainerSecurityContext(masked_paths=["/proc/cmdline", "/var"], readonly_paths=["/tmp"])
    pod, cid, _ = await _run(pods, "paths", security)
    assert await pod.sh(cid, "wc -c < /proc/cmdline") == "0"
    assert (await pod.exec(cid, "touch", "/var/x")).exit_code != 0
    result = await pod.exec(cid, "touch", "/tmp/x")
    assert result.exit_code != 0 and b"Read-only file system" in result.stderr, result
    await pod.sh(cid, "touch /etc/writable")  # the rest of the rootfs is not read-only


KUBELET_MASKED = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
KUBELET_READONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


async def test_the_kubelets_default_masked_and_readonly_paths(pods):
    """What the kubelet sends for every unprivileged container; some paths do not exist on this kernel."""
    security = cri.LinuxContainerSecurityContext(masked_paths=KUBELET_MASKED, readonly_paths=KUBELET_READONLY)
    pod, cid, _ = await _run(pods, "kubelet-paths", security)
    assert await pod.sh(cid, "wc -c < /proc/timer_list") == "0"
    assert await pod.sh(cid, "ls /sys/firmware") == ""
    result = await pod.exec(cid, "sh", "-c", "echo 1 > /proc/sys/kernel/shm_rmid_forced")
    assert result.exit_code != 0 and b"Read-only file system" in result.stderr, result
    await pod.sh(cid, "touch /tmp/x /var/x")
