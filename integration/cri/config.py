"""containerd's CRI plugin configuration for the suite (config v2 for 1.6/1.7, v3 for 2.x) and its CNI network."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CNI_BIN_DIR = "/usr/lib/cni"
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
RUNTIMES = {"pyoci": "io.containerd.pyoci.v2", "runc": "io.containerd.runc.v2"}


@dataclass(frozen=True)
class Network:
    """A private CNI bridge network: its own bridge name, subnet and host-local state; one slot per session."""

    slot: int
    lock_fd: int

    @property
    def name(self) -> str:
        return f"pyoci-cri-{self.slot}"

    @property
    def bridge(self) -> str:
        return f"pyocicri{self.slot}"  # at most 11 characters: an interface name allows 15

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.213.{self.slot}.0/24")

    def conflist(self, ipam_dir: Path) -> dict:
        return {
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,  # no iptables rules on the host: the pods talk only to the host
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(ipam_dir),
                        "ranges": [[{"subnet": str(self.subnet)}]],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def release(self) -> None:
        """Delete the bridge (the bridge plugin leaves it) and give the slot back."""
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)
        os.close(self.lock_fd)


def _routed_subnets() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(line.split()[0], strict=False))
    return nets


def claim_network(lock_dir: Path = Path("/tmp")) -> Network:
    """A slot no other session holds (a flock) whose bridge does not exist and whose subnet nothing routes."""
    routed = _routed_subnets()
    for slot in range(1, 250):
        fd = os.open(lock_dir / f"pyoci-cri-net.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        network = Network(slot, fd)
        if Path(f"/sys/class/net/{network.bridge}").exists() or any(network.subnet.overlaps(n) for n in routed):
            os.close(fd)
            continue
        return network
    raise RuntimeError("no free CNI network slot (10.213.1-249.0/24 all taken or routed)")


def check_cni_plugins() -> None:
    missing = [p for p in CNI_PLUGINS if not os.access(f"{CNI_BIN_DIR}/{p}", os.X_OK)]
    if missing:
        raise RuntimeError(
            f"CNI plugins missing from {CNI_BIN_DIR}: {', '.join(missing)} "
            "(Debian: containernetworking-plugins; ./dev setup installs it)"
        )


def _runtimes(prefix: str) -> str:
    return "".join(
        f"[{prefix}.containerd.runtimes.{name}]\n  runtime_type = '{rtype}'\n" for name, rtype in RUNTIMES.items()
    )


def cri_config(major: int, cni_conf_dir: Path, sandbox_image: str) -> tuple[int, str]:
    """(config version, TOML appended to the harness config) for a containerd of this major version.

    restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE (see notes/machine.md).
    netns_mounts_under_state_dir: the pods' netns stay under the private state dir, not /var/run/netns.
    NRI (on by default in 2.x) would listen on /var/run/nri/nri.sock: disabled.
    """
    if major >= 2:
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        return 3, (
            f"[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n"
            f"[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = '{sandbox_image}'\n"
            f"[{runtime}]\n  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n"
            f"  enable_cdi = false\n"
            f"[{runtime}.containerd]\n  default_runtime_name = 'runc'\n"
            + _runtimes(runtime)
            + f"[{runtime}.cni]\n  bin_dirs = ['{CNI_BIN_DIR}']\n  conf_dir = '{cni_conf_dir}'\n"
            "[plugins.'io.containerd.grpc.v1.cri']\n  stream_server_address = '127.0.0.1'\n"
            "  stream_server_port = '0'\n"
            "[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n"
        )
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return 2, (
        f"[{cri}]\n  sandbox_image = '{sandbox_image}'\n  restrict_oom_score_adj = true\n"
        f"  netns_mounts_under_state_dir = true\n  stream_server_address = '127.0.0.1'\n  stream_server_port = '0'\n"
        f"[{cri}.containerd]\n  snapshotter = 'overlayfs'\n  default_runtime_name = 'runc'\n"
        + _runtimes(cri)
        + f"[{cri}.cni]\n  bin_dir = '{CNI_BIN_DIR}'\n  conf_dir = '{cni_conf_dir}'\n"
        + '[plugins."io.containerd.nri.v1.nri"]\n  disable = true\n'
    )


def write_cni_conf(conf_dir: Path, network: Network, ipam_dir: Path) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"10-{network.name}.conflist"
    path.write_text(json.dumps(network.conflist(ipam_dir), indent=2) + "\n")
    return path
