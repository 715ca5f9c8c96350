"""Creating container processes: the fork protocol between the runtime (parent) and the new process.

Everything that can be computed or validated is done in the parent, into a :class:`Plan`; the child
only makes syscalls, in one linear sequence, and reports failures through a SEQPACKET socket as
``{"t": "error", "step", "errno", "detail"}``. The child never returns into the caller's code (it
ends in ``execve`` or ``os._exit``), uses no asyncio and takes no locks, so forking from the shim's
single-threaded event loop is safe.

Init process (``spawn_init``):

  parent                                  child A (runtime ns)          child B (container pid 1)
  fork A ───────────────────────────────► [unshare user] "sync" ─┐
  write id maps, put A in cgroup, "go" ◄─────────────────────────┘
                                          setns/unshare the rest,
                                          time offsets, fork B ───────► "pid" is sent by A, A exits
  reap A                                                                rootfs mounts, devices
  prestart + createRuntime hooks ◄──────────────────────────────────── "hooks"
  "go" + state ────────────────────────────────────────────────────►  createContainer hooks, pivot_root,
                                                                        masked/readonly paths, hostname,
                                                                        sysctl, rlimits, caps, seccomp
  create returns ◄───────────────────────────────────────────────────  "ready"; blocks on exec.fifo
  (start opens exec.fifo) ─────────────────────────────────────────►  startContainer hooks, execve

Exec process (``spawn_exec``): A joins the container's namespaces (fds opened by the parent), B applies
the process settings and execs; the parent sees EOF on the socket when execve succeeded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass, field

from . import kernel as k
from . import rootfs, security
from .errors import SetupError
from .hooks import run_hooks
from .spec import Process, Spec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_TIMEOUT = 60.0


@dataclass
class Plan:
    """What the child needs, computed and validated by the parent."""

    process: Process
    spec: Spec | None = None  # init only
    rootfs: str = ""
    stdio: tuple[int, int, int] | None = None  # fds to become 0, 1, 2 (None: inherit)
    new_namespaces: int = 0  # CLONE_* flags, user excluded
    new_user: bool = False
    join: list[tuple[int, int]] = field(default_factory=list)  # (CLONE_* flag, fd), user first
    uid_map: str = ""
    gid_map: str = ""
    time_offsets: str = ""
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    caps: security.CapSets | None = None
    rlimits: tuple[tuple[int, int, int], ...] = ()
    seccomp: tuple[bytes, int] | None = None
    exec_fifo: int | None = None  # O_PATH fd of exec.fifo (init only)
    terminal: bool = False  # allocate a pty in the container; its master comes back as Spawned.console
    no_pivot: bool = False
    new_keyring: str = ""  # name of a new session keyring for the container ("" keeps the runtime's)
    setsid: bool = True


class Channel:
    """JSON messages over a SEQPACKET unix socket (one message per packet), optionally carrying one fd
    (the pty master of a terminal process), which ``recv`` returns as ``msg["fd"]``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, fd: int | None = None, **msg: object) -> None:
        data = json.dumps(msg).encode()
        if fd is None:
            self.sock.send(data)
        else:
            socket.send_fds(self.sock, [data], [fd])

    def recv(self) -> dict | None:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 1)
        if not data:
            return None
        msg = json.loads(data)
        if fds:
            msg["fd"] = fds[0]
        return msg


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


# ------------------------------------------------------------------------------------------------ parent


@dataclass
class Spawned:
    pid: int
    channel: Channel  # stays open until the process has exec'd (init: until start)
    console: int | None = None  # pty master of a terminal process (the caller owns it)


def _fork_container_process(
    plan: Plan, body: Callable[[Plan, Channel], None], add_to_cgroup: Callable[[int], None]
) -> tuple[Channel, int]:
    """The part init and exec share: fork A, let it enter the namespaces (writing the id maps and joining
    the cgroup for it), and get the pid of B, which A forks to run ``body`` and then exits."""
    parent, child = _pair()
    pid_a = os.fork()
    if pid_a == 0:
        parent.sock.close()
        _child(lambda: _run_a(plan, child, body))
    child.sock.close()
    pid_b = 0
    try:
        parent.sock.settimeout(SETUP_TIMEOUT)
        _expect(parent, "sync")
        _sync_a(plan, pid_a, add_to_cgroup)
        parent.send(t="go")
        pid_b = int(_expect(parent, "pid")["pid"])
        _reap(pid_a)
        return parent, pid_b
    except BaseException:
        _abort(pid_a, pid_b)
        parent.sock.close()
        raise


def spawn_init(
    plan: Plan,
    add_to_cgroup: Callable[[int], None],
    run_runtime_hooks: Callable[[int], dict],
) -> Spawned:
    """Fork the container's init; returns once it waits on exec.fifo. ``run_runtime_hooks(pid)`` runs
    the prestart and createRuntime hooks and returns the state JSON for the in-container hooks."""
    parent, pid_b = _fork_container_process(plan, _init_b, add_to_cgroup)
    console = None
    try:
        _expect(parent, "hooks")
        state = run_runtime_hooks(pid_b)
        parent.send(t="go", state=state)
        msg = _expect(parent, "console" if plan.terminal else "ready")
        console = msg.get("fd")
        if plan.terminal:
            _expect(parent, "ready")
        parent.sock.settimeout(None)
        return Spawned(pid_b, parent, console)
    except BaseException:
        _abort(0, pid_b)
        parent.sock.close()
        if console is not None:
            os.close(console)
        raise


def spawn_exec(plan: Plan, add_to_cgroup: Callable[[int], None]) -> tuple[int, int | None]:
    """Fork a process into a running container; returns its pid (and its pty master if it has a terminal)
    once execve succeeded."""
    parent, pid_b = _fork_container_process(plan, _exec_b, add_to_cgroup)
    console = None
    try:
        if plan.terminal:
            console = _expect(parent, "console").get("fd")
        msg = parent.recv()  # EOF: execve closed the socket (CLOEXEC) — success
        if msg is not None:
            _raise_for(msg)
        return pid_b, console
    except BaseException:
        _abort(0, pid_b)
        if console is not None:
            os.close(console)
        raise
    finally:
        parent.sock.close()


def release(spawned_fifo: str, pid: int, timeout: float | None = None) -> None:
    """Start a created container: open exec.fifo so that its init proceeds to execve."""
    import select
    import time

    fd = os.open(spawned_fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            if poller.poll(100):
                if os.read(fd, 1):
                    return
            if not _alive(pid):
                raise SetupError("start", errno.ESRCH, f"container init {pid} exited before it was started")
            if deadline is not None and time.monotonic() > deadline:
                raise SetupError("start", errno.ETIMEDOUT, "container init did not read exec.fifo")
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _expect(channel: Channel, kind: str) -> dict:
    try:
        msg = channel.recv()
    except TimeoutError:
        raise SetupError("container setup", errno.ETIMEDOUT, f"no {kind!r} from the child") from None
    if msg is None:
        raise SetupError("container setup", errno.EPIPE, "the container process exited during setup")
    if msg.get("t") != kind:
        _raise_for(msg)
    return msg


def _raise_for(msg: dict) -> None:
    if msg.get("t") == "error":
        raise SetupError(msg.get("step", "container setup"), int(msg.get("errno", 0)), msg.get("detail", ""))
    raise SetupError("container setup", errno.EPROTO, f"unexpected message {msg!r}")


def _sync_a(plan: Plan, pid_a: int, add_to_cgroup: Callable[[int], None]) -> None:
    if plan.new_user:
        try:
            _write(f"/proc/{pid_a}/uid_map", plan.uid_map)
            _write(f"/proc/{pid_a}/gid_map", plan.gid_map)
        except OSError as exc:
            raise SetupError("write id mappings", exc.errno or errno.EIO, f"/proc/{pid_a}/uid_map") from None
    add_to_cgroup(pid_a)


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _abort(pid_a: int, pid_b: int) -> None:
    for pid in (pid_b, pid_a):
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if pid_a:
        _reap(pid_a)
    # pid_b is reaped by whoever reaps orphans (the caller is a subreaper, or init)


# ------------------------------------------------------------------------------------------------- child


def _child(body: Callable[[], None]) -> None:
    """Run ``body`` in a forked child; never return."""
    code = 127
    try:
        _reset_signals()
        body()
    except BaseException:  # nothing may escape into the parent's code
        code = 126
    finally:
        os._exit(code)


def _reset_signals() -> None:
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


class _Step:
    """``with step("name", "detail"):`` turns an OSError into a SetupError naming the step."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name, self.detail = name, detail

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, OSError) and not isinstance(exc, SetupError):
            raise SetupError(self.name, exc.errno or errno.EIO, self.detail or (exc.filename or "")) from None
        return False


def _report(channel: Channel, exc: BaseException) -> None:
    if isinstance(exc, SetupError):
        msg = {"t": "error", "step": exc.step, "errno": exc.errno, "detail": exc.detail}
    else:
        msg = {"t": "error", "step": "container setup", "errno": 0, "detail": f"{type(exc).__name__}: {exc}"}
    try:
        channel.send(**msg)
    except OSError:
        pass


def _stdio(plan: Plan) -> None:
    if plan.stdio is None:
        return
    with _Step("set up stdio"):
        for target, fd in enumerate(plan.stdio):
            os.dup2(fd, target)


def _join_and_unshare(plan: Plan, channel: Channel) -> None:
    user = [fd for flag, fd in plan.join if flag == k.CLONE_NEWUSER]
    with _Step("join user namespace"):
        for fd in user:
            k.setns(fd, k.CLONE_NEWUSER)
    if plan.new_user:
        with _Step("unshare user namespace"):
            k.unshare(k.CLONE_NEWUSER)
    channel.send(t="sync")
    msg = channel.recv()
    if not msg or msg.get("t") != "go":
        raise SetupError("container setup", errno.EPIPE, "the runtime went away")
    if plan.new_user:
        with _Step("become root in the user namespace"):
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
    for flag, fd in plan.join:
        if flag != k.CLONE_NEWUSER:
            with _Step("join namespace", _ns_name(flag)):
                k.setns(fd, flag)
    if plan.new_namespaces:
        with _Step("unshare namespaces"):
            k.unshare(plan.new_namespaces)
    if plan.time_offsets:
        with _Step("write time offsets", "/proc/self/timens_offsets"):
            _write("/proc/self/timens_offsets", plan.time_offsets)


def _ns_name(flag: int) -> str:
    return next((name for name, f in k.NAMESPACE_FLAGS.items() if f == flag), hex(flag))


def _fork_b(channel: Channel, body: Callable[[], None]) -> None:
    """In A: fork B (which lands in the new or joined pid namespace), report its pid, exit."""
    pid_b = os.fork()
    if pid_b == 0:
        _child(body)
    channel.send(t="pid", pid=pid_b)
    os._exit(0)


def _run_a(plan: Plan, channel: Channel, body: Callable[[Plan, Channel], None]) -> None:
    try:
        _stdio(plan)
        _join_and_unshare(plan, channel)
    except BaseException as exc:
        _report(channel, exc)
        raise
    _fork_b(channel, lambda: _guarded(channel, lambda: body(plan, channel)))


def _guarded(channel: Channel, body: Callable[[], None]) -> None:
    try:
        body()
    except BaseException as exc:
        _report(channel, exc)
        raise


def _init_b(plan: Plan, channel: Channel) -> None:
    spec = plan.spec
    assert spec is not None
    linux = spec.linux
    if plan.setsid:
        with _Step("setsid"):
            os.setsid()
    if plan.new_keyring:
        try:
            k.join_session_keyring(plan.new_keyring)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EACCES):  # no keyctl (or forbidden by seccomp/LSM): runc too
                raise SetupError("join session keyring", exc.errno or errno.EIO, plan.new_keyring) from None
    in_userns = plan.new_user or any(flag == k.CLONE_NEWUSER for flag, _ in plan.join)
    mount_ns = plan.new_namespaces & k.CLONE_NEWNS
    if mount_ns:
        rootfs.prepare_root(plan.rootfs, linux.rootfs_propagation)
        for m in spec.mounts:
            rootfs.mount_entry(
                plan.rootfs,
                m,
                cgroup_paths=plan.cgroup_paths,
                cgroupns=bool(plan.new_namespaces & k.CLONE_NEWCGROUP),
                netns=bool(plan.new_namespaces & k.CLONE_NEWNET) or linux.namespace("network") is not None,
            )
        if rootfs.needs_dev_setup(spec):
            rootfs.create_devices(plan.rootfs, rootfs.DEFAULT_DEVICES + linux.devices, in_userns)
            rootfs.setup_dev_links(plan.rootfs)
    channel.send(t="hooks")
    msg = channel.recv()
    if not msg or msg.get("t") != "go":
        raise SetupError("container setup", errno.EPIPE, "the runtime went away")
    state = msg.get("state") or {}
    run_hooks("createContainer", spec.hooks.create_container, state)
    if mount_ns:
        (rootfs.move_root if plan.no_pivot else rootfs.pivot_root)(plan.rootfs)
        for path in linux.readonly_paths:
            rootfs.readonly_path(path)
        for path in linux.masked_paths:
            rootfs.mask_path(path)
        if spec.root.readonly:
            rootfs.readonly_root()
    else:
        with _Step("chroot", plan.rootfs):
            os.chroot(plan.rootfs)
            os.chdir("/")
    if spec.hostname:
        with _Step("set hostname", spec.hostname):
            k.sethostname(spec.hostname)
    if spec.domainname:
        with _Step("set domainname", spec.domainname):
            k.setdomainname(spec.domainname)
    for key, value in linux.sysctl:
        path = "/proc/sys/" + key.replace(".", "/")
        with _Step("set sysctl", f"{key}={value}"):
            _write(path, value)
    if plan.terminal:
        _setup_console(plan, channel)
    _process_setup(plan)
    argv0 = _resolve_executable(plan.process)
    channel.send(t="ready")
    with _Step("wait for start", "exec.fifo"):
        fd = os.open(f"/proc/self/fd/{plan.exec_fifo}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
        os.close(fd)
    run_hooks("startContainer", spec.hooks.start_container, state)
    _execve(plan.process, argv0)


def _exec_b(plan: Plan, channel: Channel) -> None:
    if plan.setsid or plan.terminal:
        with _Step("setsid"):
            os.setsid()
    if plan.terminal:
        _setup_console(plan, channel)
    _process_setup(plan)
    argv0 = _resolve_executable(plan.process)
    _execve(plan.process, argv0)


def _setup_console(plan: Plan, channel: Channel) -> None:
    """A pty from the container's own devpts (so ``tty`` says /dev/pts/N inside): the slave becomes the
    controlling terminal and stdio, the master goes to the runtime over the channel."""
    with _Step("allocate a terminal", "/dev/ptmx"):
        master, slave = os.openpty()
        os.set_inheritable(master, False)
        if plan.process.console_size:
            height, width = plan.process.console_size
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        channel.send(fd=master, t="console", name=os.ttyname(slave))
        os.close(master)
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)


def _process_setup(plan: Plan) -> None:
    """Process attributes common to init and exec, in runc's order; ends in the cwd, ready to exec."""
    process = plan.process
    if process.oom_score_adj is not None:
        with _Step("set oom_score_adj", f"/proc/self/oom_score_adj={process.oom_score_adj}"):
            _write("/proc/self/oom_score_adj", str(process.oom_score_adj))
    security.apply_rlimits(plan.rlimits)
    if process.no_new_privileges:
        with _Step("set no_new_privs"):
            k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
    if plan.seccomp and not process.no_new_privileges:
        _load_seccomp(plan.seccomp)  # needs CAP_SYS_ADMIN: before capabilities are dropped
    security.apply_credentials(process, plan.caps)
    with _Step("chdir", process.cwd):
        os.chdir(process.cwd)
    if plan.seccomp and process.no_new_privileges:
        _load_seccomp(plan.seccomp)  # as late as possible: fewer syscalls of ours go through it


def _load_seccomp(seccomp: tuple[bytes, int]) -> None:
    with _Step("load seccomp filter"):
        k.seccomp_set_filter(*seccomp)


def _env(process: Process) -> dict[str, str]:
    env = dict(item.split("=", 1) for item in process.env)
    return env


def _resolve_executable(process: Process) -> str:
    name = process.args[0]
    if "/" in name:
        candidates = [name if name.startswith("/") else os.path.join(process.cwd, name)]
    else:
        path = _env(process).get("PATH", DEFAULT_PATH)
        candidates = [os.path.join(d or ".", name) for d in path.split(":")]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if "/" in name:
        err = errno.EACCES if os.path.exists(candidates[0]) else errno.ENOENT
        raise SetupError("exec", err, f'"{name}": stat {candidates[0]}')
    raise SetupError("exec", errno.ENOENT, f'"{name}": executable file not found in $PATH')


def _execve(process: Process, path: str) -> None:
    security.apply_lsm_on_exec(process)
    with _Step("exec", process.args[0]):
        os.execve(path, list(process.args), _env(process))
