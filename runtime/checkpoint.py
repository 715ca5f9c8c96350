"""Checkpoint and restore of a container with CRIU (runc's ``checkpoint`` / ``restore``), through criu's command line.

``checkpoint`` dumps the container's process tree (its namespaces, mounts, cgroup properties) into an image
directory; without ``leave_running`` the container is then gone. ``restore`` recreates the container from
a bundle and such a directory: state dir and cgroup as ``create`` makes them, then criu rebuilds the tree in
its own namespaces, rooted at the bundle's rootfs, and the restored init is the container's init, so
``state`` / ``kill`` / ``delete`` work on it. The bundle's bind mounts are external mounts for criu (dumped
by destination, restored from their source); stdio pipes are reconnected with ``--inherit-fd`` from
``descriptors.json`` (runc's file). A failure of criu is an error naming its log and quoting its last errors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import kernel as k
from .container import PAUSED, RUNNING, Container, CreateOptions
from .errors import ConfigError, InvalidState, PyociError, Unsupported
from .spec import Spec
from .state import Store, process_start_time, validate_id

log = logging.getLogger("pyoci.runtime")

CRIU = "criu"
DUMP_LOG, RESTORE_LOG = "dump.log", "restore.log"
DESCRIPTORS = "descriptors.json"  # where the init's fds 0-2 pointed at dump time (runc's and crun's file)
EXT_NETNS = "extRootNetNS"  # criu's key for a joined network namespace (runc's and crun's name)
CGROUP_MODES = ("soft", "full", "strict", "ignore", "props", "none")


class CriuError(PyociError):
    """criu failed: names its log and quotes the log's last error lines."""

    def __init__(self, action: str, log_path: Path, status: int) -> None:
        self.log_path = log_path
        super().__init__(f"criu {action} failed (exit status {status}); log {log_path}: {_log_errors(log_path)}")


@dataclass(frozen=True)
class CheckpointOptions:
    image_path: str
    work_path: str = ""  # criu's logs and work files (default: the image directory)
    leave_running: bool = False
    tcp_established: bool = False
    ext_unix_sk: bool = False
    file_locks: bool = False
    manage_cgroups_mode: str = "soft"
    empty_ns: tuple[str, ...] = ()  # namespaces not to dump ("network": restored into a fresh one)


@dataclass
class RestoreOptions:
    image_path: str
    work_path: str = ""
    tcp_established: bool = False
    ext_unix_sk: bool = False
    file_locks: bool = False
    manage_cgroups_mode: str = "soft"
    create: CreateOptions = field(default_factory=CreateOptions)  # stdio, pid_file


def _log_errors(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read it: {exc.strerror})"
    errors = [line.strip() for line in text if "Error" in line] or [line.strip() for line in text[-lines:]]
    return " | ".join(errors[-lines:]) or "(empty)"


def _mode(mode: str) -> str:
    if mode not in CGROUP_MODES:
        raise ConfigError("manage-cgroups-mode", f"{mode!r} is not one of {', '.join(CGROUP_MODES)}", source="pyoci")
    return mode


def _refuse_terminal(spec: Spec) -> None:
    if spec.process is not None and spec.process.terminal:
        raise Unsupported("checkpoint/restore of a container with a terminal (process.terminal) is not supported")


def _bind_mounts(spec: Spec) -> list[tuple[str, str]]:
    """(destination, source) of the config's bind mounts: the mounts criu must treat as external."""
    binds = []
    for m in spec.mounts:
        if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
            binds.append((os.path.normpath(m.destination), m.source))
    return binds


def _run_criu(action: str, argv: list[str], log_path: Path, stdio: tuple[int, int, int] | None = None) -> None:
    log.debug("running %s", " ".join(argv))
    try:
        fds = stdio or (subprocess.DEVNULL, subprocess.DEVNULL, subprocess.DEVNULL)
        status = subprocess.run(argv, stdin=fds[0], stdout=fds[1], stderr=fds[2], check=False).returncode
    except FileNotFoundError:
        raise Unsupported(f"checkpoint/restore needs criu ({CRIU} is not on PATH)") from None
    if status != 0:
        raise CriuError(action, log_path, status)


def _common(argv: list[str], image: Path, work: Path, opts: CheckpointOptions | RestoreOptions) -> None:
    argv += ["--images-dir", str(image), "--work-dir", str(work), "-v4"]
    argv += [f"--manage-cgroups={_mode(opts.manage_cgroups_mode)}"]
    if opts.tcp_established:
        argv.append("--tcp-established")
    if opts.ext_unix_sk:
        argv.append("--ext-unix-sk")
    if opts.file_locks:
        argv.append("--file-locks")


def checkpoint(container: Container, opts: CheckpointOptions) -> Path:
    """Dump ``container`` into ``opts.image_path``; without ``leave_running`` criu kills its processes after
    (the caller deletes the container: the CLI at once, the shim when containerd asks). Returns the image dir."""
    status = container.status()
    if status not in (RUNNING, PAUSED):
        raise InvalidState(f"container {container.id} cannot be checkpointed: it is {status}, not running")
    spec = container.spec
    _refuse_terminal(spec)
    image = Path(os.path.abspath(opts.image_path))
    image.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(os.path.abspath(opts.work_path)) if opts.work_path else image
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = container.state.pid
    descriptors = _stdio_descriptors(pid)
    (image / DESCRIPTORS).write_text(json.dumps(descriptors))
    argv = [CRIU, "dump", "--tree", str(pid), "--root", os.path.realpath(container.state.rootfs)]
    _common(argv, image, work, opts)
    argv += [arg for key in descriptors if key.startswith("file[") for arg in ("--external", key)]
    argv += ["--log-file", DUMP_LOG]
    for dest, _source in _bind_mounts(spec):
        argv += ["--ext-mount-map", f"{dest}:{dest}"]
    for ns in spec.linux.namespaces:
        if ns.type == "network" and ns.path:
            argv += ["--external", f"net[{os.stat(ns.path).st_ino}]:{EXT_NETNS}"]
    for ns in opts.empty_ns:
        argv += ["--empty-ns", ns.replace("network", "net")]
    freezer = container.cgroup.paths().get("freezer") or container.cgroup.paths().get("")
    if freezer and container.state.cgroup_owned:
        argv += ["--freeze-cgroup", freezer]
    if opts.leave_running:
        argv.append("--leave-running")
    with container.store.lock(container.id):
        _run_criu("dump", argv, work / DUMP_LOG)
    return image


def _stdio_descriptors(pid: int) -> list[str]:
    """What the init's fds 0-2 are, as criu keys: a pipe as ``pipe:[inode]``; a file of a mount outside the
    container (the runtime caller's /dev/null, a log file) as the external file ``file[mnt_id:inode]`` (hex,
    criu's format), which criu cannot dump and restore reconnects to the caller's fd; anything else as its path."""
    mounts = set()
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            mounts.add(int(line.split()[0]))
    out = []
    for fd in range(3):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
            mnt_id = int(info.get("mnt_id", "-1").strip())
            inode = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
        except (OSError, ValueError):
            out.append("")
            continue
        if link.startswith("/") and mnt_id not in mounts:
            out.append(f"file[{mnt_id:x}:{inode:x}]")
        else:
            out.append(link)
    return out


def restore(store: Store, container_id: str, bundle: str, opts: RestoreOptions) -> Container:
    """Recreate container ``container_id`` from ``bundle`` and the images in ``opts.image_path``; the restored
    tree runs as the container's init."""
    validate_id(container_id)
    image = Path(os.path.abspath(opts.image_path))
    if not (image / "inventory.img").exists():
        raise ConfigError("image-path", f"{image} holds no criu checkpoint (no inventory.img)", source="pyoci")
    work = Path(os.path.abspath(opts.work_path)) if opts.work_path else image
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    container = Container.new(store, container_id, bundle, opts.create, action="restore")
    spec = container.spec
    root = store.dir(container_id) / "criu-root"
    pid = 0
    try:
        _refuse_terminal(spec)
        container.make_cgroup(spec)
        root.mkdir()
        # criu pivots into --root, which must be a mount point of its own, private to the host
        k.mount(container.state.rootfs, str(root), None, k.MS_BIND | k.MS_REC)
        try:
            k.mount(None, str(root), None, k.MS_PRIVATE | k.MS_REC)
            _ensure_mountpoints(spec, root)
            pid = _criu_restore(container, spec, root, image, work, opts)
        finally:
            k.umount(str(root), k.MNT_DETACH)
        container.state.pid = pid
        container.state.pid_start = process_start_time(pid)
        container.state.started = True
        store.save(container.state)
        if opts.create.pid_file:
            Path(opts.create.pid_file).write_text(str(pid))
    except BaseException:
        if pid:
            _kill(pid)
        container._undo_create()
        raise
    finally:
        if root.exists():
            root.rmdir()
    return container


def _criu_restore(container: Container, spec: Spec, root: Path, image: Path, work: Path, opts: RestoreOptions) -> int:
    pidfile = container.store.dir(container.id) / "criu.pid"
    # detached: the restored init is reparented to the nearest subreaper (the shim's main thread, or the CLI
    # waiting for it), as a created container's init is
    argv = [CRIU, "restore", "--root", str(root), "--restore-detached"]
    _common(argv, image, work, opts)
    argv += ["--log-file", RESTORE_LOG, "--pidfile", str(pidfile)]
    for dest, source in _bind_mounts(spec):
        argv += ["--ext-mount-map", f"{dest}:{source}"]
    for controller, path in _cgroup_roots(container):
        argv += ["--cgroup-root", f"{controller}:{path}" if controller else path]
    pass_fds: list[int] = []
    for ns in spec.linux.namespaces:
        if ns.type == "network" and ns.path:
            fd = os.open(ns.path, os.O_RDONLY)
            pass_fds.append(fd)
            argv += ["--inherit-fd", f"fd[{fd}]:{EXT_NETNS}"]
    stdio = opts.create.stdio
    try:
        descriptors = json.loads((image / DESCRIPTORS).read_text())
    except (OSError, ValueError):
        descriptors = []
    for fd, what in enumerate(descriptors[:3]):
        if isinstance(what, str) and what.startswith(("pipe:", "file[")):
            argv += ["--inherit-fd", f"fd[{fd}]:{what}"]
    try:
        log.debug("running %s", " ".join(argv))
        fds = stdio or (0, 1, 2)
        try:
            status = subprocess.run(
                argv, stdin=fds[0], stdout=fds[1], stderr=fds[2], pass_fds=pass_fds, check=False
            ).returncode
        except FileNotFoundError:
            raise Unsupported(f"checkpoint/restore needs criu ({CRIU} is not on PATH)") from None
    finally:
        for fd in pass_fds:
            os.close(fd)
    if status != 0:
        raise CriuError("restore", work / RESTORE_LOG, status)
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        raise PyociError(f"criu restore wrote no pid to {pidfile}; log {work / RESTORE_LOG}") from None


def _cgroup_roots(container: Container) -> list[tuple[str, str]]:
    """criu's --cgroup-root values: the container's cgroup in each hierarchy, relative to its mount."""
    from .cgroups import detect_layout

    layout = detect_layout()
    roots = []
    for controller, path in container.cgroup.paths().items():
        mount = layout.unified_mount if controller == "" else layout.v1_mounts.get(controller, "")
        if mount and (path + "/").startswith(mount.rstrip("/") + "/"):
            rel = "/" + path[len(mount.rstrip("/")) :].lstrip("/")
            if controller == "" and layout.mode != "unified":
                continue  # hybrid: criu knows the v1 controllers only
            roots.append((controller.removeprefix("name="), rel))
    return roots


def _ensure_mountpoints(spec: Spec, root: Path) -> None:
    """The destinations of bind mounts must exist for criu to mount onto (create makes them; a new rootfs
    from the image may lack them). Created only where the parent path is a plain directory."""
    for dest, source in _bind_mounts(spec):
        target = root / dest.lstrip("/")
        if os.path.lexists(target):
            continue
        parent = target.parent
        if os.path.realpath(parent) != str(parent):  # a symlink on the way: leave it to criu to report
            continue
        parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(source):
            target.mkdir()
        else:
            target.touch()


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def criu_check() -> str:
    """'' when ``criu check`` passes on this kernel, else its first error line (the cause; the later ones
    are consequences)."""
    if shutil.which(CRIU) is None:
        return f"{CRIU} is not installed"
    result = subprocess.run([CRIU, "check"], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return ""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
    return lines[0] if lines else (result.stdout + result.stderr).strip()[-300:]
