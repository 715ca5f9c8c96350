"""Settings of the runtime spec that used to be silently wrong: rootfsPropagation (applied to the
container's / after pivot_root) and configs without a mount namespace (refused, never a dead container
reported as created)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "propagation, tag",
    [("rshared", "shared:"), ("shared", "shared:"), ("unbindable", "unbindable"), ("rprivate", None)],
)
def test_rootfs_propagation_applies_to_the_containers_root(bundle, propagation, tag):
    bundle.config["linux"]["rootfsPropagation"] = propagation
    bundle.config["process"]["args"] = ["sh", "-c", "awk '$5 == \"/\"' /proc/self/mountinfo"]
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    root = result.stdout.strip().splitlines()[-1]
    optional = root.split(" - ")[0].split()[6:]
    if tag is None:
        assert not optional, root
    else:
        assert any(field.startswith(tag) for field in optional), root


def test_a_config_without_a_mount_namespace_is_refused(bundle):
    bundle.config["linux"]["namespaces"] = [ns for ns in bundle.config["linux"]["namespaces"] if ns["type"] != "mount"]
    bundle.write()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "pyoci: ERROR: config.json: linux.namespaces: a container needs a mount namespace (new, or joined by path): "
        "its mounts would change the host's"
    ]
    assert not bundle.leftovers()


@pytest.mark.parametrize(
    "key, drop, reason",
    [
        ("vm.swappiness", None, "is not in a separate kernel namespace"),
        ("net.core.somaxconn", "network", "needs a network namespace"),
        ("kernel.shm_rmid_forced", "ipc", "needs an ipc namespace"),
    ],
    ids=["host-only", "net-without-netns", "ipc-without-ipcns"],
)
def test_a_sysctl_no_namespace_of_the_container_isolates_is_refused(bundle, key, drop, reason):
    with open(f"/proc/sys/{key.replace('.', '/')}") as f:
        before = f.read()
    bundle.config["linux"]["sysctl"] = {key: before.strip()}
    if drop:
        bundle.config["linux"]["namespaces"] = [n for n in bundle.config["linux"]["namespaces"] if n["type"] != drop]
    bundle.write()
    result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pyoci: ERROR: config.json: linux.sysctl.{key}: {reason}"), lines
    assert not bundle.leftovers()


def test_loopback_is_up_in_a_new_network_namespace(bundle):
    bundle.config["process"]["args"] = ["ip", "addr", "show", "lo"]
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    assert "inet 127.0.0.1/8" in result.stdout and ",UP" in result.stdout.splitlines()[0], result.stdout
