"""The CRI suite's own configuration: containerd TOML per major version and the CNI conflist (no daemon needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from integration.cri.config import Network, cri_config
from integration.harness.containerd import Containerd


@pytest.mark.parametrize(("major", "version"), [(1, 2), (2, 3)])
def test_cri_config_per_containerd_version(tmp_path, major, version):
    config_version, extra = cri_config(major, tmp_path / "cni", "example/pause:1")
    daemon = Containerd(tmp_path, binary="/bin/true", cri_config=extra, config_version=config_version)
    config = tomllib.loads(daemon.config_text())
    assert config["version"] == version
    assert "io.containerd.grpc.v1.cri" not in config["disabled_plugins"]
    plugins = config["plugins"]
    assert plugins["io.containerd.nri.v1.nri"]["disable"] is True
    if version == 3:
        runtime = plugins["io.containerd.cri.v1.runtime"]
        assert plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "example/pause:1"
        assert runtime["cni"]["bin_dirs"] == ["/usr/lib/cni"]
    else:
        runtime = plugins["io.containerd.grpc.v1.cri"]
        assert runtime["sandbox_image"] == "example/pause:1"
        assert runtime["cni"]["bin_dir"] == "/usr/lib/cni"
    assert runtime["restrict_oom_score_adj"] is True and runtime["netns_mounts_under_state_dir"] is True
    assert runtime["cni"]["conf_dir"] == str(tmp_path / "cni")
    runtimes = runtime["containerd"]["runtimes"]
    assert {n: r["runtime_type"] for n, r in runtimes.items()} == {
        "pyoci": "io.containerd.pyoci.v2",
        "runc": "io.containerd.runc.v2",
    }


def test_the_harness_default_config_keeps_cri_disabled(tmp_path):
    config = tomllib.loads(Containerd(tmp_path).config_text())
    assert config["version"] == 2 and "io.containerd.grpc.v1.cri" in config["disabled_plugins"]
    assert "plugins" not in config


def test_cni_network_is_private(tmp_path):
    conf = Network(slot=7, lock_fd=-1).conflist(tmp_path / "ipam")
    bridge = conf["plugins"][0]
    assert (conf["name"], bridge["bridge"], bridge["ipMasq"]) == ("pyoci-cri-7", "pyocicri7", False)
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.213.7.0/24"}]]
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap"]
    assert len(bridge["bridge"]) <= 15 and Path("/usr/lib/cni/loopback").exists()
