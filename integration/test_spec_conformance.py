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
