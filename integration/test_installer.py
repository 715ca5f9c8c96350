"""The node installer: the image built offline, installed onto a scratch node root without Python, used by
a real containerd (the shim found through PATH in the node's /usr/local/bin), upgraded under a running
container, uninstalled without a trace.

The image is built with buildah from this checkout (``integration/harness/installer.py``: debootstrap bases
and buildah's layer cache under /var/cache/pyoci/installer); the installer runs in a working container of
the image with the node's root mounted at /host, as a DaemonSet runs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import py_compile
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from integration.conftest import NAMESPACE, containerd_under_test
from integration.harness.containerd import Containerd
from integration.harness.ctr import Ctr
from integration.harness.image import IMAGE_NAME, build_busybox_image
from integration.harness.installer import CACHE, REPO, base_tarball, build_image, buildah
from integration.harness.versions import containerd_binary

INSTALLER = "/opt/pyoci/install.sh"


class Installer:
    """A working container of an installer image; ``run`` executes the installer against a node root."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.container = buildah("from", "--pull-never", image)
        self.version = buildah("run", "--isolation=chroot", self.container, "--", INSTALLER, "version")

    def run(self, node: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        env = {"CONTAINERD_VERSION": "1.7", "PYOCI_PRUNE": "always", **env}
        argv = [*self.argv(node, env), "--", INSTALLER, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"install.sh {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def argv(self, node: Path, env: dict[str, str]) -> list[str]:
        storage = [f"--root={CACHE / 'storage'}", f"--runroot={CACHE / 'runroot'}", "--storage-driver=vfs"]
        envs = [f"--env={k}={v}" for k, v in env.items()]
        # chroot isolation shares the host's pid namespace, as a DaemonSet with hostPID: true does; reading other
        # processes' /proc/PID/maps needs CAP_SYS_PTRACE (a privileged DaemonSet has it)
        run = ["run", "--isolation=chroot", "--cap-add=CAP_SYS_PTRACE", f"--volume={node}:/host", *envs]
        return ["buildah", *storage, *run, self.container]

    def remove(self) -> None:
        buildah("rm", self.container, check=False)


def derive_second(image: str) -> Installer:
    """Another build of pyoci without a second image build: a new working container of the image whose tree
    carries another version string (its module, bytecode and VERSION changed, as a rebuild would)."""
    installer = Installer(image)
    tree = Path(buildah("mount", installer.container)) / "opt/pyoci/tree"
    try:
        init = tree / "lib/python3.11/site-packages/pyoci/runtime/__init__.py"
        text = re.sub(r'__version__ = "([^"]+)"', r'__version__ = "\1+second"', init.read_text())
        init.write_text(text)
        cache = importlib.util.cache_from_source(str(init))
        py_compile.compile(str(init), cfile=cache, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        version = installer.version.split("-")[0] + "+second-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        (tree / "VERSION").write_text(version + "\n")
    finally:
        buildah("umount", installer.container)
    installer.version = version
    return installer


@pytest.fixture(scope="module")
def images():
    first = build_image(REPO, tag="test")
    how = "reused (same files)" if first.reused else "built"
    print(f"\ninstaller image {how} in {first.seconds:.1f}s")
    installers = [Installer(first.image)]
    try:
        installers.append(derive_second(first.image))
        yield installers
    finally:
        for installer in installers:
            installer.remove()


@pytest.fixture
def node():
    """A scratch node root: debootstrap minbase bookworm (no Python), unpacked from the cached tarball."""
    root = Path(tempfile.mkdtemp(prefix="pyoci-node-", dir="/tmp"))
    os.chmod(root, 0o755)
    subprocess.run(["tar", "-C", str(root), "-xf", str(base_tarball("minbase"))], check=True)
    assert not list(root.glob("usr/bin/python*")) and not list(root.glob("usr/lib/python3*")), "the node has Python"
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def skeleton():
    """A bare node root (/opt, /usr/local/bin, /etc) for the tests that only look at what install writes."""
    root = Path(tempfile.mkdtemp(prefix="pyoci-skeleton-", dir="/tmp"))
    os.chmod(root, 0o755)
    for sub in ("opt", "usr/local/bin", "etc"):
        (root / sub).mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def listing(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode, owner, and a symlink's target or a file's size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            extra = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            if stat.S_ISREG(st.st_mode):
                extra = (st.st_size, st.st_mtime_ns)
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid, st.st_gid, extra)
    return out


def identities(tree: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of a tree: a rewritten file gets another."""
    return {
        os.path.relpath(os.path.join(d, f), tree): (
            os.lstat(os.path.join(d, f)).st_ino,
            os.lstat(os.path.join(d, f)).st_mtime_ns,
        )
        for d, _, files in os.walk(tree)
        for f in files
    }


def mapped_files(pid: int) -> set[str]:
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            files.add(parts[5])
    return files


def assert_runs_from(pid: int, version_dir: Path) -> None:
    """The process runs the bundled loader and interpreter of ``version_dir``; every file it maps is there."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    assert exe == str(version_dir / "lib/native/ld-linux-x86-64.so.2"), exe
    mapped = mapped_files(pid)
    assert str(version_dir / "libexec/python3.11") in mapped
    assert str(version_dir / "lib/native/libc.so.6") in mapped
    outside = {f for f in mapped if not f.startswith((str(version_dir) + "/", "/dev/", "/memfd:"))}
    assert not outside, f"pid {pid} maps files outside {version_dir}: {sorted(outside)}"


def shim_of(containerd: Containerd, known: set[int], timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(containerd.shim_pids()) - known
        if new:
            return new.pop()
        time.sleep(0.05)
    raise AssertionError("no new shim")


def refers_to_node_python(root: Path, tree: Path) -> list[str]:
    """Links leaving the tree, executables run by an interpreter of the node, launchers naming /usr."""
    bad = []
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = os.path.realpath(path)
                if not target.startswith(str(tree) + "/"):
                    bad.append(f"{path} -> {target}")
                continue
            if os.stat(path).st_mode & 0o111:
                head = path.read_bytes()[:256]
                if head.startswith(b"#!") and not head.startswith(b"#!/bin/sh\n"):
                    bad.append(f"{path}: {head.splitlines()[0]!r}")
    bad += [f"{launcher} names /usr" for launcher in (tree / "bin").iterdir() if "/usr/" in launcher.read_text()]
    for command in ("containerd-shim-pyoci-v2", "pyoci"):
        link = root / "usr/local/bin" / command
        if not os.path.realpath(link).startswith(str(tree) + "/"):
            bad.append(f"{link} -> {os.path.realpath(link)}")
    return bad


def test_install_run_upgrade_uninstall(images, node):
    first, second = images
    before = listing(node)
    base = node / "opt/pyoci"

    out = first.run(node, "install")
    v1 = base / "versions" / first.version
    assert os.readlink(base / "current") == f"versions/{first.version}"
    assert "handler: pyoci" in out.stdout, out.stdout
    dropin = (node / "etc/containerd/conf.d/pyoci.toml").read_text()
    assert 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pyoci]' in dropin and "version = 2" in dropin
    assert not refers_to_node_python(node, v1), refers_to_node_python(node, v1)
    installed = identities(v1)
    size = subprocess.run(["du", "-sh", str(v1)], capture_output=True, text=True).stdout.split()[0]
    print(f"\ninstalled size of {first.version}: {size} ({len(installed)} files)")
    assert "already installed" in first.run(node, "install").stderr  # the same build again: a no-op
    assert identities(v1) == installed

    containerd = Containerd(
        Path(tempfile.mkdtemp(prefix="pyoci-it-installer-", dir="/tmp")),
        binary=containerd_under_test(),
        shim_dirs=(str(node / "usr/local/bin"),),
    )
    containerd.start()
    ctr = Ctr(containerd.address, NAMESPACE, containerd.env())
    try:
        ctr("images", "import", str(build_busybox_image(containerd.base / "busybox.tar")))
        run = ("run", "--runtime", "io.containerd.pyoci.v2")
        assert ctr(*run, "--rm", IMAGE_NAME, "inst-once", "echo", "hello").stdout.strip() == "hello"
        deadline = time.monotonic() + 10
        while containerd.shim_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

        ctr(*run, "-d", IMAGE_NAME, "inst-old", "sleep", "1000")
        old_shim = shim_of(containerd, set())
        assert_runs_from(old_shim, v1)

        # upgrade while it runs: a new directory, `current` switched, the running shim's files untouched
        out = second.run(node, "install")
        v2 = base / "versions" / second.version
        assert second.version != first.version and os.readlink(base / "current") == f"versions/{second.version}"
        assert f"version {first.version} kept: a running process maps it" in out.stderr, out.stderr
        assert identities(v1) == installed
        ctr(*run, "-d", IMAGE_NAME, "inst-new", "sleep", "1000")
        new_shim = shim_of(containerd, {old_shim})
        assert_runs_from(new_shim, v2)
        assert_runs_from(old_shim, v1)
        assert ctr("tasks", "exec", "--exec-id", "e1", "inst-old", "echo", "old").stdout.strip() == "old"
        assert ctr("tasks", "exec", "--exec-id", "e1", "inst-new", "echo", "new").stdout.strip() == "new"
        ctr.remove("inst-old", "inst-new")
    finally:
        ctr.remove("inst-old", "inst-new")
        leftovers = containerd.stop()
    assert not leftovers, leftovers

    # nothing maps the first version any more (its shims and template are gone): the next install prunes it
    out = second.run(node, "install")
    assert f"removed version {first.version}" in out.stderr, out.stderr
    assert sorted(p.name for p in (base / "versions").iterdir()) == [second.version]

    second.run(node, "uninstall")
    after = listing(node)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"added {added[:10]}, removed {removed[:10]}, changed {changed[:10]}"


def test_tree_needs_nothing_of_the_host(images):
    """The interpreter tree runs in an empty root (no libc, no /usr, no /proc) through its own loader."""
    first, _ = images
    empty = Path(tempfile.mkdtemp(prefix="pyoci-empty-", dir="/tmp"))
    try:
        mount = buildah("mount", first.container)
        shutil.copytree(Path(mount) / "opt/pyoci/tree", empty / "t", symlinks=True)
        buildah("umount", first.container)
        code = "import asyncio, ctypes, ssl, google.protobuf, pyoci.shim.daemon, pyoci.runtime.seccomp as s; s._lib()"
        argv = ["/t/lib/native/ld-linux-x86-64.so.2", "--library-path", "/t/lib/native", "--argv0", "/t/bin/python3.11"]
        result = subprocess.run(
            ["chroot", str(empty), *argv, "/t/libexec/python3.11", "-c", code + "; import sys; print(sys.prefix)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and result.stdout.strip() == "/t", result.stderr
    finally:
        shutil.rmtree(empty, ignore_errors=True)


@pytest.mark.parametrize("version", ["1.7", "2.1"])
def test_dropin_is_read_by_containerd(images, skeleton, version):
    """containerd 1.7 and 2.1 load the drop-in through `imports` and get the pyoci runtime from it."""
    first, _ = images
    cv = "2.x" if version.startswith("2") else version
    first.run(skeleton, "install", CONTAINERD_VERSION=cv)
    config_version = 3 if cv == "2.x" else 2
    main = skeleton / "containerd-main.toml"
    main.write_text(f'version = {config_version}\nimports = ["{skeleton}/etc/containerd/conf.d/*.toml"]\n')
    dump = subprocess.run(
        [containerd_binary(version), "--config", str(main), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dump.returncode == 0, dump.stderr
    section = "io.containerd.cri.v1.runtime" if cv == "2.x" else "io.containerd.grpc.v1.cri"
    # 1.7 dumps "double", 2.x 'single' quotes
    table = rf"\[plugins\.[\"']{re.escape(section)}[\"']\.containerd\.runtimes\.pyoci\]\s*\n(.*?)\n\s*\["
    runtime = re.search(table, dump.stdout, re.S)
    assert runtime, dump.stdout[-3000:]
    assert re.search(r"runtime_type = [\"']io\.containerd\.pyoci\.v2[\"']", runtime.group(1)), runtime.group(0)
    assert re.search(r"SystemdCgroup = true", dump.stdout)
    main.unlink()
    first.run(skeleton, "uninstall")


def test_containerd_16_gets_a_snippet_and_a_patch(images, skeleton):
    first, _ = images
    config = skeleton / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause"\n')
    out = first.run(skeleton, "install", CONTAINERD_VERSION="1.6")
    assert not (skeleton / "etc/containerd/conf.d").exists()
    assert '+[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pyoci]' in out.stdout, out.stdout
    patch = out.stdout[out.stdout.index("--- /etc/containerd/config.toml") : out.stdout.index("apiVersion:")]
    subprocess.run(["patch", "-s", "-d", str(skeleton), "-p1"], input=patch, text=True, check=True)
    assert 'runtime_type = "io.containerd.pyoci.v2"' in config.read_text()
    first.run(skeleton, "uninstall")


def test_daemonset_mode_waits_for_sigterm_then_uninstalls(images, skeleton):
    first, _ = images
    before = listing(skeleton)
    env = {"CONTAINERD_VERSION": "1.7", "PYOCI_PRUNE": "always", "PYOCI_UNINSTALL_ON_EXIT": "1"}
    runner = subprocess.Popen(
        [*first.argv(skeleton, env), "--", INSTALLER, "daemonset"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stderr is not None
        for line in runner.stderr:
            if "waiting for SIGTERM" in line:
                break
        assert (skeleton / "usr/local/bin/containerd-shim-pyoci-v2").is_symlink()
        installer = [pid for pid in _pids_running(f"{INSTALLER} daemonset") if pid != runner.pid]
        assert installer, "the installer's sh process is not visible"
        for pid in installer:
            os.kill(pid, signal.SIGTERM)
        assert runner.wait(timeout=30) == 0, runner.stderr.read()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert listing(skeleton) == before


def _pids_running(command: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if argv.strip().endswith(command) and "buildah" not in argv:
                pids.append(int(entry))
    return pids
