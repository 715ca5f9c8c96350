"""nerdctl bound to the harness containerd, with all its state (data root, CNI config, IPAM) under a temp dir.

nerdctl's default network ("bridge") is written here before nerdctl first runs, so that its bridge name
and subnet are this session's own (nerdctl would make ``nerdctl0`` with 10.4.0.0/24) and host-local keeps
its leases under the temp dir. What the CNI plugins leave on the host is removed by name at the end:
iptables rules whose comment names a container of this session's namespace (the bridge plugin's
masquerade rules outlive the container: its DEL runs after the netns is gone), rules naming this bridge,
shared CNI-* chains that did not exist before and hold nothing but the plugins' fixed rules, the bridge.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CNI_PATH = "/usr/lib/cni"
CNI_CACHE = Path("/var/lib/cni/results")
TABLES = ("filter", "nat")
# chains the bridge/portmap/firewall plugins share between all their networks
SHARED_CHAINS = (
    "CNI-FORWARD",
    "CNI-ADMIN",
    "CNI-ISOLATION-STAGE-1",
    "CNI-ISOLATION-STAGE-2",
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-SNAT",
    "CNI-HOSTPORT-MASQ",
    "CNI-HOSTPORT-SETMARK",
)


def _iptables(table: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(["iptables", "-w", "5", "-t", table, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"iptables -t {table} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _rules(table: str) -> list[str]:
    return [line for line in _iptables(table, "-S").splitlines() if line.startswith("-A ")]


def _chains(table: str) -> set[str]:
    return {line.split()[1] for line in _iptables(table, "-S").splitlines() if line.startswith("-N ")}


def _delete_rule(table: str, rule: str) -> None:
    # iptables -S prints a rule as its -A arguments, shell-quoted: -D takes the same words
    _iptables(table, "-D", *shlex.split(rule)[1:], check=False)


@dataclass
class Network:
    """nerdctl's default network for this session: its own bridge, subnet and IPAM directory."""

    base: Path
    namespace: str
    bridge: str = ""
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("10.213.0.0/24"))
    _chains_before: dict[str, set[str]] = field(default_factory=dict)

    @property
    def conf_dir(self) -> Path:
        return self.base / "cni-conf"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "cni-ipam"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def setup(self) -> None:
        tag = hashlib.sha256(str(self.base).encode()).hexdigest()
        self.bridge = "pyocind" + tag[:6]  # IFNAMSIZ: 15 characters at most
        self.subnet = _free_subnet(int(tag[6:10], 16))
        self._chains_before = {table: _chains(table) for table in TABLES}
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "1.0.0",
            "name": "bridge",
            "nerdctlID": hashlib.sha256(b"bridge").hexdigest(),  # as nerdctl names it: the digest of the name
            "nerdctlLabels": {"nerdctl/default-network": "true"},
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"gateway": self.gateway, "subnet": str(self.subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.ipam_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "firewall", "ingressPolicy": "same-bridge"},
                {"type": "tuning"},
            ],
        }
        (self.conf_dir / "nerdctl-bridge.conflist").write_text(json.dumps(conf, indent=2))

    def leases(self) -> list[str]:
        """Addresses host-local has handed out and not taken back."""
        d = self.ipam_dir / "bridge"
        return sorted(p.name for p in d.iterdir() if re.fullmatch(r"[\d.]+", p.name)) if d.is_dir() else []

    def cleanup(self, container_ids: Iterable[str] = ()) -> list[str]:
        """Remove what the plugins left for this session (``container_ids``: every container it made); returns a
        description of it."""
        removed = []
        # the bridge and portmap plugins name a container's chains after a digest of network name + CNI id
        # ("<namespace>-<container id>" from nerdctl); a DEL racing another can leave one of them empty
        own_chains = set()
        for cid in container_ids:
            digest = hashlib.sha512(f"bridge{self.namespace}-{cid}".encode()).hexdigest()
            own_chains |= {("CNI-" + digest)[:28], ("CNI-DN-" + digest)[:28]}
        marker = f'id: \\"{self.namespace}-'
        for table in TABLES:
            emptied: set[str] = set()  # per-container chains (CNI-<hash>, CNI-DN-<hash>) whose rules were ours
            for rule in _rules(table):
                if marker in rule or re.search(rf"(^| )-[io] {re.escape(self.bridge)}( |$)", rule):
                    removed.append(f"{table}: {rule}")
                    _delete_rule(table, rule)
                    words = rule.split()
                    target = words[words.index("-j") + 1] if "-j" in words else ""
                    emptied |= {c for c in (words[1], target) if c.startswith("CNI-") and c not in SHARED_CHAINS}
            for chain in sorted(emptied | own_chains):
                if chain in _chains(table) and not _rules_of(table, chain) and not _referenced(table, chain):
                    removed.append(f"{table}: chain {chain}")
                    _iptables(table, "-X", chain, check=False)
            removed += _remove_new_shared_chains(table, self._chains_before.get(table, set()))
        if Path(f"/sys/class/net/{self.bridge}").exists():
            removed.append(f"bridge {self.bridge}")
            subprocess.run(["ip", "link", "delete", self.bridge], check=False)
        for cached in CNI_CACHE.glob(f"bridge-{self.namespace}-*"):
            removed.append(f"CNI cache {cached}")
            with contextlib.suppress(OSError):
                cached.unlink()
        return removed


def remove_namespace_cgroups(namespace: str) -> list[str]:
    """The per-namespace parent cgroups (/<namespace>) the runtimes leave when their last container goes: at
    each hierarchy's root and under this process's own cgroup (a relative path's parent)."""
    from pyoci.runtime.cgroups import detect_layout

    layout = detect_layout()
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path.lstrip("/")
    mounts = {**layout.v1_mounts, **({"": layout.unified_mount} if layout.unified_mount else {})}
    left = []
    for controller, mount in mounts.items():
        for parent in {Path(mount), Path(mount, own.get(controller, ""))}:
            d = parent / namespace
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError as exc:
                    left.append(f"cgroup {d}: {exc.strerror} ({sorted(p.name for p in d.iterdir() if p.is_dir())})")
    return left


def _remove_new_shared_chains(table: str, before: set[str]) -> list[str]:
    """Shared chains that appeared during the session and hold only the plugins' fixed rules: unhooked,
    flushed, deleted. One that holds a rule for some container (another user's) stays."""
    idle = [
        chain
        for chain in SHARED_CHAINS
        if chain not in before
        and chain in _chains(table)
        and not any(_specific(rule) for rule in _rules_of(table, chain))
    ]
    for chain in idle:
        for rule in _rules(table):
            if rule.split()[-2:] == ["-j", chain]:
                _delete_rule(table, rule)
    for chain in idle:
        _iptables(table, "-F", chain, check=False)
    for chain in idle:
        _iptables(table, "-X", chain, check=False)
    return [f"{table}: shared chain {chain} (new in this session)" for chain in idle]


def _rules_of(table: str, chain: str) -> list[str]:
    return [rule for rule in _rules(table) if rule.split()[1] == chain]


def _referenced(table: str, chain: str) -> bool:
    return any(rule.split()[-2:] == ["-j", chain] for rule in _rules(table))


def _specific(rule: str) -> bool:
    """A rule for one container or bridge (addresses, interfaces, per-container chains), not a fixed one."""
    words = rule.split()
    if any(w in words for w in ("-s", "-d", "-i", "-o")):
        return True
    target = words[words.index("-j") + 1] if "-j" in words else ""
    return target.startswith("CNI-") and target not in SHARED_CHAINS


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no address or route of the host overlaps."""
    taken = []
    for cmd in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for match in re.finditer(r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out):
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.IPv4Network(match.group(1), strict=False))
    for i in range(256):
        candidate = ipaddress.IPv4Network(f"10.213.{(seed + i) % 256}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise RuntimeError("no free /24 in 10.213.0.0/16 for nerdctl's bridge network")


@dataclass
class Nerdctl:
    """One nerdctl binary driving the harness containerd; every container it makes is named and removed."""

    binary: Path
    version: str
    address: str
    namespace: str
    data_root: Path
    network: Network
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [
            str(self.binary),
            "--address",
            self.address,
            "--namespace",
            self.namespace,
            "--data-root",
            str(self.data_root),
            "--cni-path",
            CNI_PATH,
            "--cni-netconfpath",
            str(self.network.conf_dir),
            "--cgroup-manager",
            "cgroupfs",
            "--snapshotter",
            "overlayfs",
            *args,
        ]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"nerdctl {self.version} {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", "--mode", "dockercompat", name).stdout)[0]


def nerdctl_env(base: Path) -> dict[str, str]:
    """The process environment for nerdctl: an empty nerdctl.toml of our own (not /etc/nerdctl's)."""
    toml = base / "nerdctl.toml"
    toml.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NERDCTL_", "CONTAINERD_", "CNI_", "NETCONF"))}
    env["NERDCTL_TOML"] = str(toml)
    return env
