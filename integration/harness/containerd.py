"""A private containerd for tests: its own root, state, sockets and config under a temp dir.

Never touches a system containerd: every path it uses is under ``base``; the shims it starts find their
binaries through the PATH given here (the venv's bin first, so ``containerd-shim-pyoci-v2`` resolves).
Stopped by PID; ``stop()`` also ends shims that were started for this containerd and unmounts what
is left under ``base``, reporting what it had to clean so that tests can fail on leaks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = """\
version = {version}
root = "{root}"
state = "{state}"
disabled_plugins = [
{disabled}]

[grpc]
  address = "{address}"

[debug]
  level = "{level}"
"""
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)


@dataclass
class Containerd:
    base: Path
    binary: str = field(default_factory=lambda: shutil.which("containerd") or "/usr/bin/containerd")
    level: str = "info"
    process: subprocess.Popen | None = None
    # opt-in (the CRI suite): the CRI plugin enabled, this TOML appended to the config, in this config version
    cri_config: str | None = None
    config_version: int = 2
    # where containerd-shim-pyoci-v2 is looked up first (the installer test: a node root's usr/local/bin)
    shim_dirs: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return str(self.base / "containerd.sock")

    @property
    def ttrpc_address(self) -> str:
        return self.address + ".ttrpc"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def log_path(self) -> Path:
        return self.base / "containerd.log"

    def env(self) -> dict[str, str]:
        # the venv's bin (containerd-shim-pyoci-v2), then this containerd's own (its ctr and runc shim)
        bin_dirs = [
            *(self.shim_dirs or (str(Path(sys.executable).parent),)),
            str(Path(self.binary).parent),
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        return {**os.environ, "PATH": ":".join(bin_dirs)}

    def start(self, timeout: float = 20.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(self.config_text())
        log = open(self.log_path, "ab")  # handed to the child, closed below
        try:
            self.process = subprocess.Popen(
                [self.binary, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env(),
                start_new_session=True,
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def config_text(self) -> str:
        disabled = [p for p in DISABLED_PLUGINS if self.cri_config is None or p != "io.containerd.grpc.v1.cri"]
        text = CONFIG.format(
            version=self.config_version,
            root=self.root,
            state=self.state,
            disabled="".join(f'  "{p}",\n' for p in disabled),
            address=self.address,
            level=self.level,
        )
        return text if self.cri_config is None else text + "\n" + self.cri_config

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.process.returncode}:\n{self.log_tail()}")
            if os.path.exists(self.address) and os.path.exists(self.ttrpc_address):
                probe = subprocess.run(
                    ["ctr", "--address", self.address, "version"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    env=self.env(),
                )
                if probe.returncode == 0 and "Server:" in probe.stdout:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"containerd did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_daemon(self, timeout: float = 10.0) -> None:
        """Stop containerd itself (its shims keep running, as in production)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop_daemon()
        self.start(timeout)

    def shim_pids(self) -> list[int]:
        """Shims started by this containerd (their argv names our gRPC address); not the pyoci template."""
        return [pid for pid, argv in _processes() if self._ours(argv) and "zygote" not in argv]

    def template_pids(self) -> list[int]:
        """pyoci's shim template (fork server) for this containerd: expected to outlive containers a while."""
        return [pid for pid, argv in _processes() if self._ours(argv) and "zygote" in argv]

    def _ours(self, argv: list[str]) -> bool:
        return "-address" in argv and self.address in argv

    def stop(self, grace: float = 5.0) -> list[str]:
        """Stop everything and clean up; returns a description of leftovers that had to be removed.
        Shims still finishing a normal exit (after Shutdown, publishing their last events) get ``grace``
        seconds, with containerd still up, before they count as leftovers."""
        deadline = time.monotonic() + grace
        while self.shim_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop_daemon()
        leftovers = []
        for pid in self.shim_pids():
            leftovers.append(f"shim pid {pid}: {' '.join(dict(_processes()).get(pid, []))}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # templates remove their socket and record file on SIGTERM; SIGKILL only what does not go
        templates = self.template_pids()
        for pid in templates:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while set(templates) & set(self.template_pids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.template_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mount in sorted(mounts_under(self.base), reverse=True):
            leftovers.append(f"mount {mount}")
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        return leftovers


def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            out.append((int(entry), [a.decode(errors="replace") for a in argv if a.strip()]))
    return out


def mounts_under(base: Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    from pyoci.runtime.procfs import mount_points

    return [target for target in mount_points() if target.startswith(prefix)]
