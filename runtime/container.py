"""The container lifecycle (create → start → kill → delete, plus exec, pause, resume, update), shared by
the ``pyoci`` CLI and the shim.

Create reads like the spec's lifecycle: validate the bundle, claim the state dir, make the cgroup,
compute the process plan, fork the init (which stops on exec.fifo), record the state. Whatever fails
half-way is undone in reverse: the process is killed, the cgroup and the state dir removed.
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import signal
import time
from pathlib import Path

from . import idmap, security
from . import kernel as k
from . import process as proc
from .cgroups import Manager, open_cgroup
from .errors import ConfigError, InvalidState, PyociError, SetupError
from .hooks import run_hooks
from .records import mutable_record, record
from .seccomp import compile_filter, process_state, send_to_listener
from .spec import Process, Resources, Spec, load_spec, read_config, spec_from_bytes
from .state import State, Store, process_start_time, process_status, validate_id

log = logging.getLogger("pyoci.runtime")

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"


@record
class OciState:
    """The container state runtime-spec defines (runtime.md, "State"): what ``pyoci state`` prints and what
    hooks read on stdin."""

    oci_version: str
    id: str
    status: str
    pid: int
    bundle: str
    rootfs: str
    created: str
    annotations: dict[str, str]
    owner: str

    def to_json(self) -> dict:
        return {
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": self.status,
            "pid": self.pid,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "owner": self.owner,
        }


@mutable_record
class CreateOptions:
    stdio: tuple[int, int, int] | None = None  # fds for the init's stdin/stdout/stderr (None: inherit)
    no_pivot: bool = False
    no_new_keyring: bool = False
    pid_file: str | None = None
    preserve_fds: int = 0  # the caller's fds 3 .. 3+N-1 stay open in the init (runc's --preserve-fds)
    systemd_cgroup: bool = False  # cgroupsPath is "slice:prefix:name" (default system.slice:pyoci:ID)


class Container:
    def __init__(self, store: Store, state: State) -> None:
        self.store = store
        self.state = state
        self._spec: Spec | None = None
        self._cgroup: Manager | None = None
        self.console: int | None = None  # pty master of a terminal init, for the caller to take

    # --------------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, store: Store, container_id: str) -> Container:
        return cls(store, store.load(container_id))

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def spec(self) -> Spec:
        """The config as it was at create (a copy in the state dir: changes to the bundle's config.json after
        create must not affect the container); the bundle's for containers made before that copy existed."""
        if self._spec is None:
            copy = self.store.dir(self.id) / "config.json"
            self._spec = spec_from_bytes(copy.read_bytes()) if copy.exists() else load_spec(self.state.bundle)
        return self._spec

    @property
    def cgroup(self) -> Manager:
        if self._cgroup is None:
            self._cgroup = open_cgroup(self.state.cgroups_path, self.id)
        return self._cgroup

    # ---------------------------------------------------------------------------------------- create

    @classmethod
    def create(cls, store: Store, container_id: str, bundle: str, options: CreateOptions | None = None) -> Container:
        options = options or CreateOptions()
        container = cls.new(store, container_id, bundle, options)
        spec = container.spec
        try:
            spec.log_warnings()
            container._create(spec, options)
        except BaseException:
            container._undo_create()
            raise
        return container

    @classmethod
    def new(
        cls, store: Store, container_id: str, bundle: str, options: CreateOptions, action: str = "create"
    ) -> Container:
        """A new container of ``bundle`` with nothing running yet (for create, and for a criu restore): the config
        checked, the state dir, the state and a copy of config.json on disk, its cgroup not yet made."""
        validate_id(container_id)
        bundle = os.path.abspath(bundle)
        raw = read_config(bundle)
        spec = spec_from_bytes(raw)
        if spec.process is None:
            raise ConfigError("process", f"required to {action} a container")
        security.check_lsm(spec.process)
        rootfs = spec.root.path if spec.root.path.startswith("/") else os.path.join(bundle, spec.root.path)
        if not os.path.isdir(rootfs):
            raise ConfigError("root.path", f"{rootfs} is not a directory")
        if os.path.realpath(rootfs) == "/":
            raise ConfigError(
                "root.path", f"{spec.root.path} resolves to the host's / (a container needs a rootfs of its own)"
            )
        _check_sysctls(spec)
        if spec.linux.namespace("mount") is None:
            raise ConfigError(
                "linux.namespaces",
                "a container needs a mount namespace (new, or joined by path): its mounts would change the host's",
            )
        cgroups_path = spec.linux.cgroups_path
        if options.systemd_cgroup:
            from .cgroups.systemd import systemd_path

            cgroups_path = systemd_path(cgroups_path, container_id)
        store.create(container_id)
        container = cls(
            store,
            State(
                id=container_id,
                bundle=bundle,
                rootfs=rootfs,
                created=datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
                annotations=dict(spec.annotations),
                cgroups_path=cgroups_path,
            ),
        )
        container._spec = spec
        try:
            # the state is on disk before anything is made, so that a create killed half-way can be deleted
            container.state.cgroup_owned = not container.cgroup.exists()
            store.save(container.state)
            (store.dir(container_id) / "config.json").write_bytes(raw)
        except BaseException:
            container._undo_create()
            raise
        return container

    def make_cgroup(self, spec: Spec) -> Manager:
        """The container's cgroup made (idempotent: an existing cgroup is joined, never removed or killed, see
        ``cgroup_owned``), its paths recorded and the config's resources applied."""
        cgroup = self.cgroup
        cgroup.create()
        self.state.cgroup_paths = cgroup.paths()
        for warning in cgroup.apply(spec.linux.resources):
            log.warning("%s: %s", self.id, warning)
        return cgroup

    def _create(self, spec: Spec, options: CreateOptions) -> None:
        assert spec.process is not None
        cgroup = self.make_cgroup(spec)
        fifo = self.store.fifo(self.id)
        os.mkfifo(fifo, 0o622)
        os.chmod(fifo, 0o622)  # not subject to the umask: the container's root must be able to open it
        os.chown(fifo, _host_id(spec.linux.uid_mappings, 0), _host_id(spec.linux.gid_mappings, 0))
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        join_fds: list[int] = []
        trees: dict[int, int] = {}
        try:
            trees = idmap.detached_trees(spec)  # made here, in the runtime's namespaces; moved into place by B
            plan = self._init_plan(spec, options, fifo_fd, join_fds)
            plan.idmapped = trees
            spawned = proc.spawn_init(
                plan, cgroup.add, self._runtime_hooks, lambda pid, fd: self._seccomp_agent(spec, "creating", pid, fd)
            )
        finally:
            os.close(fifo_fd)
            for fd in [*join_fds, *trees.values()]:
                os.close(fd)
        self._init_channel = spawned.channel
        self.console = spawned.console
        self.state.pid = spawned.pid
        self.state.pid_start = process_start_time(spawned.pid)
        self.store.save(self.state)
        if options.pid_file:
            _write_pid_file(options.pid_file, spawned.pid)

    def _init_plan(self, spec: Spec, options: CreateOptions, fifo_fd: int, join_fds: list[int]) -> proc.Plan:
        assert spec.process is not None
        linux = spec.linux
        new = 0
        new_user = False
        to_join: list[tuple[str, str, str]] = []
        for i, ns in enumerate(linux.namespaces):
            if ns.path:
                to_join.append((ns.type, ns.path, f"linux.namespaces[{i}].path"))
            elif ns.type == "user":
                new_user = True
            else:
                new |= k.NAMESPACE_FLAGS[ns.type]
        join = _open_namespaces(to_join, join_fds)
        return proc.Plan(
            process=spec.process,
            spec=spec,
            rootfs=self.state.rootfs,
            stdio=options.stdio,
            new_namespaces=new,
            new_user=new_user,
            join=join,
            uid_map="".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in linux.uid_mappings),
            gid_map="".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in linux.gid_mappings),
            time_offsets="".join(f"{clock} {secs} {nsecs}\n" for clock, secs, nsecs in linux.time_offsets),
            cgroup_paths=self.state.cgroup_paths,
            cgroup_version=self.cgroup.version,
            into_cgroup=self.cgroup.clone_target() or "",
            caps=self._caps(spec.process, "process"),
            rlimits=security.rlimits(spec.process),
            seccomp=compile_filter(linux.seccomp) if linux.seccomp else None,
            exec_fifo=fifo_fd,
            no_pivot=options.no_pivot,
            new_keyring="" if options.no_new_keyring else f"_ses.{self.id}",
            terminal=spec.process.terminal,
            preserve_fds=options.preserve_fds,
        )

    def _runtime_hooks(self, pid: int) -> dict:
        self.state.pid = pid
        state = self.oci_state(status="creating").to_json()
        hooks = self.spec.hooks
        run_hooks("prestart", hooks.prestart, state)
        run_hooks("createRuntime", hooks.create_runtime, state)
        return state

    def _seccomp_agent(self, spec: Spec, status: str, pid: int, fd: int) -> None:
        """Send the seccomp notify fd of process ``pid`` with the container process state to the agent."""
        profile = spec.linux.seccomp
        assert profile is not None
        send_to_listener(
            profile.listener_path, fd, process_state(profile, pid, self.oci_state(status=status).to_json())
        )

    def _undo_create(self) -> None:
        try:
            if self._cgroup is not None and self.state.cgroup_owned:
                self._cgroup.destroy_all()
        except PyociError as exc:
            log.error("%s: cleaning up the cgroup after a failed create: %s", self.id, exc)
        self.store.remove(self.id)

    def close_init_channel(self) -> None:
        channel = getattr(self, "_init_channel", None)
        if channel is not None:
            channel.sock.close()
            self._init_channel = None

    # ----------------------------------------------------------------------------------------- state

    def init_alive(self) -> bool:
        pid = self.state.pid
        if not pid or process_status(pid) in ("", "Z", "X"):
            return False
        return process_start_time(pid) == self.state.pid_start

    def status(self) -> str:
        if not self.init_alive():
            return STOPPED
        if self.store.fifo(self.id).exists():
            return CREATED
        try:
            if self.cgroup.frozen():
                return PAUSED
        except OSError:
            pass
        return RUNNING

    def oci_state(self, status: str | None = None) -> OciState:
        status = status or self.status()
        return OciState(
            oci_version=self.state.oci_version,
            id=self.id,
            status=status,
            pid=self.state.pid if status != STOPPED else 0,
            bundle=self.state.bundle,
            rootfs=self.state.rootfs,
            created=self.state.created,
            annotations=self.state.annotations,
            owner=self.state.owner,
        )

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self.store.lock(self.id):
            status = self.status()
            if status != CREATED:
                raise InvalidState(f"container {self.id} cannot be started: it is {status}, not created")
            proc.release(str(self.store.fifo(self.id)), self.state.pid)
            self.store.fifo(self.id).unlink(missing_ok=True)
            self.state.started = True
            self.store.save(self.state)
        self.close_init_channel()
        run_hooks("poststart", self.spec.hooks.poststart, self.oci_state().to_json(), on_error=self._warn)

    def kill(self, sig: int, all_processes: bool = False) -> None:
        status = self.status()
        if status == STOPPED and not all_processes:
            raise InvalidState(f"container {self.id} is not running")
        if all_processes and self.state.cgroup_owned:
            self.cgroup.kill_all(sig)
            return
        try:
            os.kill(self.state.pid, sig)
        except ProcessLookupError:
            if all_processes:
                return
            raise InvalidState(f"container {self.id} is not running") from None
        if sig == signal.SIGKILL and status == PAUSED and self.state.cgroup_owned:
            self.cgroup.thaw()

    def kill_rest(self) -> None:
        """SIGKILL what is left of the container: every process of its cgroup when pyoci made that cgroup and
        the container shares a pid namespace (runc's rule: with a pid namespace of its own, the init's death
        took everything else with it); never the processes of a cgroup pyoci joined."""
        if self.state.cgroup_owned and (self.state.pid == 0 or not self.spec_has_own_pid_namespace()):
            self.cgroup.kill_all(signal.SIGKILL)

    def spec_has_own_pid_namespace(self) -> bool:
        try:
            ns = self.spec.linux.namespace("pid")
        except (PyociError, OSError):
            return False  # no config to tell: treat it as shared (kill what is left of a cgroup pyoci made)
        return ns is not None and not ns.path

    def delete(self, force: bool = False) -> None:
        with self.store.lock(self.id):
            status = self.status()
            if status in (RUNNING, PAUSED) and not force:
                raise InvalidState(f"container {self.id} is {status}: stop it first or use --force")
            if status != STOPPED:
                if self.init_alive():
                    os.kill(self.state.pid, signal.SIGKILL)
                self.kill_rest()
                if self.state.cgroup_owned and self.cgroup.exists() and self.cgroup.frozen():
                    self.cgroup.thaw()
                _wait_gone(self.state.pid, self.state.pid_start)
            else:
                self.kill_rest()
            if self.state.cgroup_owned:
                self.cgroup.destroy_all()
            self.close_init_channel()
        try:
            state = self.oci_state(status=STOPPED).to_json()
            run_hooks("poststop", self.spec.hooks.poststop, state, on_error=self._warn)
        except (PyociError, OSError) as exc:  # the bundle's config.json may be gone by now
            log.warning("%s: %s", self.id, exc)
        self.store.remove(self.id)

    def _caps(self, process: Process, source: str) -> security.CapSets | None:
        caps = security.cap_sets(process.capabilities, security.host_bounding_set())
        if caps is not None and caps.missing:
            log.warning(
                "%s: %s.capabilities: %s cannot be granted (not in the host's bounding set); running without",
                self.id,
                source,
                ", ".join(caps.missing),
            )
        return caps

    def _warn(self, exc: Exception) -> None:
        log.warning("%s: %s", self.id, exc)

    def pause(self) -> None:
        with self.store.lock(self.id):
            status = self.status()
            if status != RUNNING:
                raise InvalidState(f"container {self.id} cannot be paused: it is {status}")
            self.cgroup.freeze()

    def resume(self) -> None:
        with self.store.lock(self.id):
            status = self.status()
            if status != PAUSED:
                raise InvalidState(f"container {self.id} cannot be resumed: it is {status}, not paused")
            self.cgroup.thaw()

    def update(self, resources: Resources) -> list[str]:
        with self.store.lock(self.id):
            if self.status() == STOPPED:
                raise InvalidState(f"container {self.id} is stopped")
            return self.cgroup.apply(resources, update=True)

    def pids(self) -> list[int]:
        return self.cgroup.pids()

    def exec(
        self, process: Process, stdio: tuple[int, int, int] | None = None, preserve_fds: int = 0
    ) -> tuple[int, int | None]:
        """Start ``process`` inside the running container; returns its pid once it has exec'd, and the
        master of its pty when ``process.terminal``."""
        status = self.status()
        if status == PAUSED:
            raise InvalidState(f"container {self.id}: cannot exec in a paused state")
        if status != RUNNING:
            raise InvalidState(f"container {self.id}: cannot exec in a {status} container")
        spec = self.spec
        security.check_lsm(process, source="exec process")
        fds: list[int] = []
        try:
            ns_dir = f"/proc/{self.state.pid}/ns"
            join = _open_namespaces(
                [(ns.type, f"{ns_dir}/{k.NAMESPACE_FILES[ns.type]}", "") for ns in spec.linux.namespaces], fds
            )
            plan = proc.Plan(
                process=process,
                stdio=stdio,
                join=join,
                caps=self._caps(process, "exec process"),
                rlimits=security.rlimits(process),
                seccomp=compile_filter(spec.linux.seccomp) if spec.linux.seccomp else None,
                terminal=process.terminal,
                preserve_fds=preserve_fds,
                into_cgroup=self.cgroup.clone_target() or "",
            )
            return proc.spawn_exec(plan, self.cgroup.add, lambda pid, fd: self._seccomp_agent(spec, RUNNING, pid, fd))
        finally:
            for fd in fds:
                os.close(fd)


# sysctls the ipc namespace isolates (runc's validator); net.* need a network namespace, kernel.hostname and
# kernel.domainname a uts one. Any other sysctl would change the host.
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)


def _check_sysctls(spec: Spec) -> None:
    """Every sysctl must be one a namespace of the container isolates, or it would be written to the host."""
    linux = spec.linux
    for key, _value in linux.sysctl:
        where = f"linux.sysctl.{key}"
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if linux.namespace("ipc") is None:
                raise ConfigError(where, "needs an ipc namespace (the config has none)")
        elif key.startswith("net."):
            net = linux.namespace("network")
            if net is None:
                raise ConfigError(where, "needs a network namespace (the config has none)")
            if net.path and _same_file(net.path, "/proc/self/ns/net"):
                raise ConfigError(where, "not allowed in the host's network namespace")
        elif key in ("kernel.hostname", "kernel.domainname"):
            if linux.namespace("uts") is None:
                raise ConfigError(where, "needs a uts namespace (the config has none)")
        else:
            raise ConfigError(where, "is not in a separate kernel namespace: it would change the host")


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _open_namespaces(entries: list[tuple[str, str, str]], opened: list[int]) -> list[tuple[int, int]]:
    """fds of the namespaces to join, as (CLONE_* flag, fd), the user namespace first (it decides what the
    others may be joined with). ``entries`` are (type, path, config field naming the path, or ""); each fd
    opened is appended to ``opened`` for the caller to close."""
    join = []
    for ns_type, path, where in entries:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if where:
                raise ConfigError(where, f"cannot open {path}: {exc.strerror}") from None
            raise SetupError("open namespace", exc.errno or errno.EIO, path) from None
        opened.append(fd)
        join.append((k.NAMESPACE_FLAGS[ns_type], fd))
    join.sort(key=lambda item: item[0] != k.CLONE_NEWUSER)
    return join


def _host_id(mappings, container_id: int) -> int:
    """The host id that ``container_id`` maps to (itself without a user namespace)."""
    for m in mappings:
        if m.container_id <= container_id < m.container_id + m.size:
            return m.host_id + container_id - m.container_id
    return container_id


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(str(pid))
    os.replace(tmp, path)


def _wait_gone(pid: int, start: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_status(pid) in ("", "Z", "X") or process_start_time(pid) != start:
            return
        time.sleep(0.005)
    raise SetupError("kill", errno.ETIMEDOUT, f"process {pid} did not die after SIGKILL")
