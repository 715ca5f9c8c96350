"""A pure cgroup v2 host for tests: a small QEMU guest (software emulation) that sees this machine's files.

    python -m integration.vm.guest [--timeout S] [--systemd] -- COMMAND...   run COMMAND in the guest (its exit status)

``--systemd`` boots systemd (the host's, 252) as PID 1 instead: /init writes units into the overlay root
(``pyoci.target`` wanting D-Bus and ``pyoci-job.service``, Debian's dbus units without their sysinit.target
dependencies), removes the generators and /.dockerenv (systemd would take the guest for a container and ignore
the kernel command line), and switch_roots into /lib/systemd/systemd; the job runs as a service and powers off.
Boot to the job: 7.4 s of guest uptime with the host's files cached (18-36 s uncached, 66 s with the generators).

What it builds (once; cached under /var/cache/pyoci/vm, outside the repository):
  * Debian's cloud kernel, ``apt-get download``-ed and unpacked with ``dpkg-deb -x`` (nothing installed);
  * an initramfs (written here as a newc cpio) holding busybox-static, the virtiofs modules and /init.
At run time ``virtiofsd`` shares the host's ``/`` read-only; the guest's /init puts a tmpfs overlay on it
(so the guest has the host's Python, venvs, containerd and checkout at the same paths), mounts cgroup2
only (``cgroup_no_v1=all``) with every controller enabled, a tmpfs on /run for containerd's state
(overlayfs does not stack on overlayfs), runs COMMAND in the current directory with the current PATH,
prints its exit status on the serial console and powers off. TCG is the only accelerator that works
here: expect CPU-bound work in the guest to be 15-45x slower than on the host. The host's files are cached in
the guest (virtiofs ``cache=always``): the guest only reads them, and they do not change during a run.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("PYOCI_CACHE", "/var/cache/pyoci")) / "vm"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
# the guest only reads the host's files, and nothing it uses changes while it runs: with the guest's own page and
# dentry caches a fork+exec of a dynamically linked binary took 40 ms instead of 300 ms (cache=none or auto: every
# path lookup and read a FUSE round trip through the emulated virtio queue)
VIRTIOFS_CACHE = "always"
EXIT_MARK = "PYOCI-GUEST-EXIT="
# mitigations=off: speculation barriers cost emulated instructions and protect nothing in a throwaway guest
KERNEL_ARGS = (
    "console=ttyS0 mitigations=off cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 panic=-1 quiet loglevel=1"
)
SYSTEMD_ARGS = "pyoci_init=systemd systemd.unit=pyoci.target systemd.show_status=0 systemd.log_level=warning"
BOOTED_MARK = "PYOCI-GUEST-BOOTED="

INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in /modules/*.ko; do [ -e "$m" ] && $B insmod "$m"; done
$B mkdir -p /host /upper /newroot
$B mount -t virtiofs hostroot /host -o ro || { echo "guest: cannot mount the host's root"; $B poweroff -f; }
$B mount -t tmpfs -o size=1500m tmpfs /upper
$B mkdir -p /upper/u /upper/w
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot
for d in proc sys dev; do $B mount --move /$d /newroot/$d; done
if [ "$pyoci_init" = systemd ]; then
  # systemd as PID 1 mounts /run and cgroup2 itself; units of our own pull in only D-Bus and the job
  U=/newroot/etc/systemd/system
  $B mkdir -p $U
  echo "$pyoci_job" > /newroot/etc/pyoci-job-path
  $B cat > /newroot/etc/pyoci-job-wrapper.sh <<'END'
exec >/dev/console 2>&1
echo "PYOCI-GUEST-BOOTED=$(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/sh "$(cat /etc/pyoci-job-path)"
echo "PYOCI-GUEST-EXIT=$?"
/bin/busybox poweroff -f
END
  $B cat > $U/pyoci.target <<'END'
[Unit]
Description=pyoci guest
Wants=pyoci-job.service
END
  $B cat > $U/pyoci-job.service <<'END'
[Unit]
Description=pyoci guest job
DefaultDependencies=no
Wants=dbus.socket dbus.service
After=dbus.socket dbus.service
[Service]
Type=oneshot
StandardInput=null
StandardOutput=null
ExecStart=/bin/sh /etc/pyoci-job-wrapper.sh
END
  # Debian's D-Bus units without their default dependencies (sysinit.target: udev, journald, ... slow in TCG)
  for u in dbus.socket dbus.service; do
    $B sed -e '/^\[Unit\]/a DefaultDependencies=no' /newroot/lib/systemd/system/$u > $U/$u
  done
  # generators (fstab, sysv, getty, gpt-auto, ...) make units this guest never starts, at TCG speed
  $B rm -f /newroot/lib/systemd/system-generators/* /newroot/usr/lib/systemd/system-generators/*
  $B rm -f /newroot/.dockerenv  # or systemd takes the guest for a container and ignores the kernel command line
  exec $B switch_root /newroot /lib/systemd/systemd --unit=pyoci.target --show-status=0
fi
$B mount -t tmpfs -o mode=755 tmpfs /newroot/run
$B mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup
for c in $($B cat /newroot/sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /newroot/sys/fs/cgroup/cgroup.subtree_control
done
exec $B switch_root /newroot /bin/busybox sh -c '
  /bin/sh "$pyoci_job"
  echo "PYOCI-GUEST-EXIT=$?"
  /bin/busybox poweroff -f'
"""


def _run(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def kernel() -> tuple[Path, list[Path]]:
    """The cloud kernel image and the modules virtiofs needs (fetched and unpacked once)."""
    root = CACHE / "kernel"
    images = sorted(root.glob("boot/vmlinuz-*"))
    if not images:
        depends = _run("apt-cache", "depends", "linux-image-cloud-amd64")
        package = next(
            line.split()[-1] for line in depends.splitlines() if "Depends:" in line and "linux-image" in line
        )
        downloads = CACHE / "debs"
        downloads.mkdir(parents=True, exist_ok=True)
        _run("apt-get", "download", "-qq", "-oAPT::Sandbox::User=root", package, cwd=downloads)
        deb = sorted(downloads.glob(f"{package}_*.deb"))[-1]
        _run("dpkg-deb", "-x", str(deb), str(root))
        images = sorted(root.glob("boot/vmlinuz-*"))
    modules = [m for rel in _MODULES for m in root.glob(f"lib/modules/*/kernel/{rel}")]
    return images[-1], modules


# what virtiofs needs, in load order (the cloud kernel builds these as modules; read from their depends=)
_MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "fs/fuse/fuse.ko",
    "fs/fuse/virtiofs.ko",
    "fs/overlayfs/overlay.ko",
)


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries (directories have empty data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        out += header.encode() + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs(modules: list[Path]) -> Path:
    path = CACHE / "initramfs.cpio.gz"
    if path.exists() and path.stat().st_mtime > Path(__file__).stat().st_mtime:
        return path
    entries = [(d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "modules")]
    entries.append(("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()))
    entries.append(("init", 0o100755, INIT.encode()))
    entries += [(f"modules/{i}-{m.name}", 0o100644, m.read_bytes()) for i, m in enumerate(modules)]  # sorted by i
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(_cpio(entries), mtime=0))
    return path


def run(command: list[str], timeout: float = 900.0, memory: str = "2G", systemd: bool = False) -> tuple[int, str]:
    """Run ``command`` in a fresh guest; returns (its exit status, the console output). ``systemd``: the guest
    boots systemd as PID 1 (D-Bus started, nothing else) and runs the command as a service."""
    image, modules = kernel()
    initrd = initramfs(modules)
    work = Path(tempfile.mkdtemp(prefix="pyoci-vm-", dir="/tmp"))
    os.chmod(work, 0o755)
    job = work / "job.sh"
    env = " ".join(f"export {k}={shlex.quote(v)};" for k, v in _guest_env().items())
    job.write_text(f"{env}\ncd {shlex.quote(os.getcwd())} && {shlex.join(command)}\n")
    sock = work / "vfs.sock"
    console = work / "console.log"
    virtiofsd = subprocess.Popen(
        [VIRTIOFSD, f"--socket-path={sock}", "-o", "source=/", "-o", "sandbox=chroot", "-o", f"cache={VIRTIOFS_CACHE}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    qemu = None
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        qemu = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-machine",
                "q35",
                # multi-threaded TCG soft-locked the guest kernel here (both vCPUs spinning while a shim was
                # forking); single-threaded TCG (the 2 vCPUs served in turn) did not
                "-accel",
                "tcg,thread=single",
                "-cpu",
                "max",
                "-smp",
                "2",
                "-m",
                memory,
                "-nographic",
                "-no-reboot",
                "-kernel",
                str(image),
                "-initrd",
                str(initrd),
                "-append",
                f"{KERNEL_ARGS} {SYSTEMD_ARGS if systemd else ''} pyoci_job={job}",
                "-object",
                f"memory-backend-memfd,id=mem,size={memory},share=on",
                "-numa",
                "node,memdev=mem",
                "-chardev",
                f"socket,id=vfs,path={sock}",
                "-device",
                "vhost-user-fs-pci,queue-size=1024,chardev=vfs,tag=hostroot",
                "-serial",
                f"file:{console}",
                "-display",
                "none",
                "-monitor",
                "none",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = qemu.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()
            err = b"guest timed out"
        output = console.read_text(errors="replace") if console.exists() else err.decode(errors="replace")
        status = next(
            (
                int(line.split("=", 1)[1])
                for line in output.splitlines()[::-1]
                if line.startswith(EXIT_MARK) and line.split("=", 1)[1].strip().isdigit()
            ),
            255,
        )
        return status, output
    finally:
        for proc in (qemu, virtiofsd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def _guest_env() -> dict[str, str]:
    keep = ("PATH", "PYOCI_CONTAINERD", "PYOCI_VENV", "HOME", "LANG")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = str(Path(sys.executable).parent) + ":" + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["PYOCI_TMP"] = "/run"  # a real tmpfs in the guest: containerd's overlayfs cannot stack on the overlay root
    env["PYOCI_IN_GUEST"] = "1"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--systemd", action="store_true", help="boot systemd as PID 1 and run COMMAND as a service")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    started = time.monotonic()
    status, output = run(
        command or ["sh", "-c", "cat /proc/self/cgroup; cat /sys/fs/cgroup/cgroup.controllers"],
        timeout=args.timeout,
        systemd=args.systemd,
    )
    sys.stdout.write(job_output(output))
    booted = [line.split("=", 1)[1] for line in output.splitlines() if line.startswith(BOOTED_MARK)]
    if booted:
        sys.stderr.write(f"guest: systemd booted to the job in {booted[-1]} s of guest uptime\n")
    sys.stderr.write(f"guest: {time.monotonic() - started:.1f} s wall\n")
    if status == 255:
        sys.stdout.write(output[-4000:])  # no exit status: show what the console said (a panic, a timeout)
    return status


def job_output(console: str) -> str:
    """The command's own output: the console after the firmware's screen clears, without kernel messages
    and the exit-status line (so the command's last line, e.g. pytest's summary, is the last line)."""
    text = console.rsplit("\x1b[2J", 1)[-1]
    lines = [line for line in text.splitlines() if not re.match(r"^\[\s*\d+\.\d+\]", line)]
    lines = [line for line in lines if not line.startswith((EXIT_MARK, BOOTED_MARK))]
    return "\n".join(lines).strip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
