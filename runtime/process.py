"""Creating container processes: the fork protocol between the runtime (parent) and the new process.

Everything that can be computed or validated is done in the parent, into a :class:`Plan`; the child
only makes syscalls, in one linear sequence, and reports a failure as an :class:`Error` (step + errno).
Nothing is imported lazily on the child's path: after entering a user namespace it may no longer be
able to read the interpreter's or the venv's files (a 0700 directory). The child never returns into the
caller's code (it ends in ``execve`` or ``os._exit``), uses no asyncio
and takes no locks, so forking from a worker thread of the shim is safe (the forking thread waits for its
first child by pid; the shim's reaper only reaps the main thread's children). It is non-dumpable
from its first instruction (no container process can open its /proc files: exe, environ, mem, fd) until
``execve``, and marks every fd >= 3 close-on-exec just before it, keeping only ``preserve_fds``.

Two children and two channels, so that the order of messages is a property of the protocol rather than of
scheduling: A (in the runtime's namespaces) enters or creates the namespaces and forks B (which lands in
the new pid namespace), reports B's pid on *its* channel and exits; B runs the container's setup and
reports on *its own* channel. Each channel carries typed messages (length-prefixed JSON over a
SOCK_STREAM socket, so a state of any size fits), in exactly this sequence (runc's sync.go, as a table):

  channel  message                   from → to   meaning
  A        Sync                      A → P       A is in its new user namespace (if any)
  A        Go                        P → A       id maps written, A placed in the cgroup
  A        Pid(pid)                  A → P       B forked; A exits
  B        Hooks                     B → P       init only: mounts and devices done; P runs prestart and
                                                 createRuntime hooks
  B        Go(state)                 P → B       init only: the state for createContainer/startContainer hooks
  B        Console(fd, name)         B → P       terminal only: the pty master (SCM_RIGHTS)
  B        SeccompFd(fd)             B → P       SCMP_ACT_NOTIFY only: the notify fd (SCM_RIGHTS) once the
                                                 filter is loaded; P sends it to the seccomp agent
  B        Ready                     B → P       init only: set up; B now blocks on exec.fifo
  B        (EOF)                     B → P       exec only: execve succeeded (the channel is close-on-exec)
  A or B   Error(step, errno, detail)            instead of any message above

The init holds exec.fifo's write end (close-on-exec) from ``start`` until its ``execve``: ``release`` reads
the fifo to EOF, so ``start`` returns (and poststart hooks run) only once the user process has started.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import field, fields

from . import kernel as k
from . import rootfs, security
from .errors import SetupError
from .hooks import run_hooks
from .procfs import process_state
from .records import mutable_record, record
from .spec import Process, Spec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_TIMEOUT = 60.0
MAX_MESSAGE = 1 << 30  # one message (the state JSON may carry large annotations)


@mutable_record
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
    cgroup_version: str = ""  # the cgroup manager's: "v1", "v2" or "hybrid"
    caps: security.CapSets | None = None
    rlimits: tuple[tuple[int, int, int], ...] = ()
    seccomp: tuple[bytes, int] | None = None
    exec_fifo: int | None = None  # O_PATH fd of exec.fifo (init only)
    terminal: bool = False  # allocate a pty in the container; its master comes back as Spawned.console
    no_pivot: bool = False
    new_keyring: str = ""  # name of a new session keyring for the container ("" keeps the runtime's)
    preserve_fds: int = 0  # fds 3 .. 3+N-1 of the caller stay open in the container (runc's --preserve-fds)
    into_cgroup: str = ""  # cgroup2 directory B is created in by clone3(CLONE_INTO_CGROUP) ("": write cgroup.procs)
    idmapped: dict[int, int] = field(default_factory=dict)  # index in spec.mounts -> fd of its idmapped tree

    @property
    def mount_setup(self) -> bool:
        """The container has a mount namespace of its own (new, or joined by path) to set its rootfs up in."""
        return bool(self.new_namespaces & k.CLONE_NEWNS) or any(flag == k.CLONE_NEWNS for flag, _ in self.join)


# ---------------------------------------------------------------------------------------------- messages


@record
class Sync:
    pass


@record
class Go:
    state: dict | None = None


@record
class Pid:
    pid: int


@record
class Hooks:
    pass


@record
class Console:
    name: str
    fd: int = -1  # travels as SCM_RIGHTS, not in the JSON


@record
class SeccompFd:
    fd: int = -1  # travels as SCM_RIGHTS, not in the JSON


@record
class Ready:
    pass


@record
class Error:
    step: str
    errno: int
    detail: str = ""

    def exception(self) -> SetupError:
        return SetupError(self.step, self.errno, self.detail)


Message = Sync | Go | Pid | Hooks | Console | SeccompFd | Ready | Error
_KINDS: dict[str, type] = {cls.__name__: cls for cls in (Sync, Go, Pid, Hooks, Console, SeccompFd, Ready, Error)}
_WITH_FD = (Console, SeccompFd)
_HEADER = struct.Struct("!I")


class Channel:
    """Typed messages over one end of a SOCK_STREAM socketpair: a 4-byte length, then ``{"t": kind, ...}``
    JSON; a :class:`Console` carries its fd as SCM_RIGHTS (received close-on-exec)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, msg: Message) -> None:
        body = {"t": type(msg).__name__, **{f.name: getattr(msg, f.name) for f in fields(msg) if f.name != "fd"}}
        data = json.dumps(body).encode()
        frame = _HEADER.pack(len(data)) + data
        if isinstance(msg, _WITH_FD):
            sent = socket.send_fds(self.sock, [frame], [msg.fd])
            frame = frame[sent:]
        if frame:
            self.sock.sendall(frame)

    def recv(self) -> Message | None:
        """The next message, or None at EOF. Raises TimeoutError past the socket's timeout."""
        header, fds = self._read(_HEADER.size, with_fds=True)
        if not header:
            return None
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE:
            _close_all(fds)
            raise SetupError("container setup", errno.EMSGSIZE, f"a message of {size} bytes")
        data, more = self._read(size)
        fds += more
        try:
            body = json.loads(data)
            cls = _KINDS[body.pop("t")]
            if cls in _WITH_FD:
                body["fd"] = fds.pop(0)
            msg = cls(**body)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            _close_all(fds)
            raise SetupError("container setup", errno.EPROTO, f"a malformed message: {exc}") from None
        _close_all(fds)
        return msg

    def expect(self, kind: type, waiting_for: str = "") -> Message:
        """The next message, which must be ``kind``; an :class:`Error` is raised as the child's failure."""
        try:
            msg = self.recv()
        except TimeoutError:
            raise SetupError("container setup", errno.ETIMEDOUT, f"no {kind.__name__} from the child") from None
        if isinstance(msg, kind):
            return msg
        if isinstance(msg, _WITH_FD):
            os.close(msg.fd)
        if isinstance(msg, Error):
            raise msg.exception()
        if msg is None:
            what = waiting_for or "the container process exited during setup"
            raise SetupError("container setup", errno.EPIPE, what)
        raise SetupError("container setup", errno.EPROTO, f"expected {kind.__name__}, got {msg!r}")

    def _read(self, size: int, with_fds: bool = False) -> tuple[bytes, list[int]]:
        chunks: list[bytes] = []
        fds: list[int] = []
        got = 0
        while got < size:
            ancillary = socket.CMSG_SPACE(4 * 4) if with_fds else 0
            data, anc, _flags, _addr = self.sock.recvmsg(size - got, ancillary, socket.MSG_CMSG_CLOEXEC)
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
            if not data:
                _close_all(fds)
                if got:
                    raise SetupError("container setup", errno.EPROTO, "a truncated message")
                return b"", []
            chunks.append(data)
            got += len(data)
        return b"".join(chunks), fds

    def close(self) -> None:
        self.sock.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a), Channel(b)


# ------------------------------------------------------------------------------------------------ parent


@mutable_record
class Spawned:
    pid: int
    channel: Channel  # B's channel; init: open until start
    console: int | None = None  # pty master of a terminal process (the caller owns it)


CLONE_STEP = "clone into cgroup"
_CLONE3_REFUSED = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP)  # kernel or seccomp lacks it
_clone3_usable = k.clone3_into_cgroup_supported()


def _clone_target(plan: Plan) -> int | None:
    """An O_PATH fd of the cgroup2 directory B is to be created in, or None for the fallback (A is written
    to cgroup.procs): no clone3(CLONE_INTO_CGROUP) here, or a user namespace (A, root in it, is not allowed
    to create a process in the host's cgroup), or PYOCI_NO_CLONE3 set (to compare)."""
    if not plan.into_cgroup or not _clone3_usable or os.environ.get("PYOCI_NO_CLONE3"):
        return None
    if plan.new_user or any(flag == k.CLONE_NEWUSER for flag, _ in plan.join):
        return None
    try:
        return os.open(plan.into_cgroup, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # the write to cgroup.procs then names what is wrong


def _fork_container_process(
    plan: Plan, body: Callable[[Plan, Channel], None], add_to_cgroup: Callable[..., None]
) -> tuple[Channel, int]:
    """The part init and exec share: fork A, let it enter the namespaces (writing the id maps and joining
    the cgroup for it), and get the pid of B, which A forks to run ``body`` and then exits. Returns B's
    channel and pid. On cgroup v2 (and the cgroup2 part of hybrid) A creates B directly in the container's
    cgroup with clone3(CLONE_INTO_CGROUP) and A itself is never moved; where the kernel (or a seccomp filter)
    refuses that, this falls back for good to writing A's pid to cgroup.procs."""
    global _clone3_usable
    cgroup_fd = _clone_target(plan)
    if cgroup_fd is None:
        return _fork_a(plan, body, add_to_cgroup, None)
    try:
        return _fork_a(plan, body, add_to_cgroup, cgroup_fd)
    except SetupError as exc:
        if exc.step != CLONE_STEP or exc.errno not in _CLONE3_REFUSED:
            raise
        _clone3_usable = False
    finally:
        os.close(cgroup_fd)
    return _fork_a(plan, body, add_to_cgroup, None)


def _fork_a(
    plan: Plan, body: Callable[[Plan, Channel], None], add_to_cgroup: Callable[..., None], cgroup_fd: int | None
) -> tuple[Channel, int]:
    parent_a, child_a = _pair()
    parent_b, child_b = _pair()
    pid_a = os.fork()
    if pid_a == 0:
        _child(lambda: _run_a(plan, child_a, child_b, (parent_a, parent_b), body, cgroup_fd))
    child_a.close()
    child_b.close()
    pid_b = 0
    try:
        parent_a.sock.settimeout(SETUP_TIMEOUT)
        parent_b.sock.settimeout(SETUP_TIMEOUT)
        pid_b = _parent_a(parent_a, plan, pid_a, add_to_cgroup, cgroup_fd is not None)
        _reap(pid_a)
        return parent_b, pid_b
    except BaseException:
        _abort(pid_a, pid_b)
        parent_b.close()
        raise
    finally:
        parent_a.close()


def spawn_init(
    plan: Plan,
    add_to_cgroup: Callable[[int], None],
    run_runtime_hooks: Callable[[int], dict],
    on_seccomp_fd: Callable[[int, int], None] | None = None,
) -> Spawned:
    """Fork the container's init; returns once it waits on exec.fifo. ``run_runtime_hooks(pid)`` runs
    the prestart and createRuntime hooks and returns the state JSON for the in-container hooks;
    ``on_seccomp_fd(pid, fd)`` hands a seccomp notify fd to the agent (the fd is closed after it)."""
    channel, pid_b = _fork_container_process(plan, _init_b, add_to_cgroup)
    try:
        console = _parent_init(channel, plan, pid_b, run_runtime_hooks, on_seccomp_fd)
        channel.sock.settimeout(None)
        return Spawned(pid_b, channel, console)
    except BaseException:
        _abort(0, pid_b)
        channel.close()
        raise


def spawn_exec(
    plan: Plan, add_to_cgroup: Callable[[int], None], on_seccomp_fd: Callable[[int, int], None] | None = None
) -> tuple[int, int | None]:
    """Fork a process into a running container; returns its pid (and its pty master if it has a terminal)
    once execve succeeded."""
    channel, pid_b = _fork_container_process(plan, _exec_b, add_to_cgroup)
    try:
        return pid_b, _parent_exec(channel, plan, pid_b, on_seccomp_fd)
    except BaseException:
        _abort(0, pid_b)
        raise
    finally:
        channel.close()


# The parent's side of the sequence in the table above, one function per channel and process kind: each
# takes the channel and callbacks only, so a test can play the child's side of a socketpair (no fork).


def _parent_a(
    channel: Channel, plan: Plan, pid_a: int, add_to_cgroup: Callable[..., None], cloned_into_cgroup: bool
) -> int:
    """A's channel: Sync, (id maps and cgroup), Go, then B's pid."""
    channel.expect(Sync)
    _sync_a(plan, pid_a, add_to_cgroup, cloned_into_cgroup)
    channel.send(Go())
    return channel.expect(Pid).pid


def _parent_init(
    channel: Channel,
    plan: Plan,
    pid: int,
    run_runtime_hooks: Callable[[int], dict],
    on_seccomp_fd: Callable[[int, int], None] | None,
) -> int | None:
    """An init's channel B: Hooks, (hooks run) Go(state), Console if a terminal, SeccompFd if notify, Ready.
    Returns the pty master (the caller owns it), closed here if a later step fails."""
    channel.expect(Hooks)
    channel.send(Go(state=run_runtime_hooks(pid)))
    console = channel.expect(Console).fd if plan.terminal else None
    try:
        _seccomp_fd(plan, channel, pid, on_seccomp_fd)
        channel.expect(Ready)
    except BaseException:
        if console is not None:
            os.close(console)
        raise
    return console


def _parent_exec(
    channel: Channel, plan: Plan, pid: int, on_seccomp_fd: Callable[[int, int], None] | None
) -> int | None:
    """An exec's channel B: Console if a terminal, SeccompFd if notify, then EOF (execve closed the
    close-on-exec channel: success)."""
    console = channel.expect(Console).fd if plan.terminal else None
    try:
        _seccomp_fd(plan, channel, pid, on_seccomp_fd)
        msg = channel.recv()
        if isinstance(msg, Error):
            raise msg.exception()
        if msg is not None:
            raise SetupError("container setup", errno.EPROTO, f"expected EOF after exec, got {msg!r}")
    except BaseException:
        if console is not None:
            os.close(console)
        raise
    return console


def _seccomp_fd(plan: Plan, channel: Channel, pid: int, on_seccomp_fd: Callable[[int, int], None] | None) -> None:
    """Receive the notify fd of a filter with SCMP_ACT_NOTIFY and hand it on; the runtime keeps no copy."""
    if plan.seccomp is None or not plan.seccomp[1] & k.SECCOMP_FILTER_FLAG_NEW_LISTENER:
        return
    fd = channel.expect(SeccompFd).fd
    try:
        if on_seccomp_fd is None:
            raise SetupError("container setup", errno.EINVAL, "a seccomp notify fd but no agent to send it to")
        on_seccomp_fd(pid, fd)
    finally:
        os.close(fd)


def release(fifo: str, pid: int, timeout: float | None = None) -> None:
    """Start a created container: open exec.fifo so that its init proceeds, and read it to EOF, which comes
    when the init's close-on-exec write end closes at ``execve`` (or when the init dies: then this fails)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        got = b""
        while True:
            if poller.poll(100):
                data = os.read(fd, 64)
                if data:
                    got += data
                elif got:
                    break  # EOF after the init's byte: it has exec'd (or died right at the exec)
            if not got and not _alive(pid):
                raise SetupError("start", errno.ESRCH, f"container init {pid} exited before it was started")
            if deadline is not None and time.monotonic() > deadline:
                raise SetupError("start", errno.ETIMEDOUT, "container init did not read exec.fifo")
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    return process_state(pid) not in ("", "Z")


def _sync_a(plan: Plan, pid_a: int, add_to_cgroup: Callable[..., None], cloned_into_cgroup: bool) -> None:
    if plan.new_user:
        try:
            _write(f"/proc/{pid_a}/uid_map", plan.uid_map)
            _write(f"/proc/{pid_a}/gid_map", plan.gid_map)
        except OSError as exc:
            raise SetupError("write id mappings", exc.errno or errno.EIO, f"/proc/{pid_a}/uid_map") from None
    if cloned_into_cgroup:
        add_to_cgroup(pid_a, unified=False)  # hybrid: the v1 hierarchies (B inherits them); pure v2: nothing
    else:
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
    """Run ``body`` in a forked child; never return. The very first thing: become non-dumpable, so that
    nothing in a container we join can open our /proc files (CVE-2019-5736); ``execve`` restores it."""
    code = 127
    try:
        k.prctl(k.PR_SET_DUMPABLE, 0)
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
    """``with _Step("name", "detail"):`` turns an OSError into a SetupError naming the step."""

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
        msg = Error(exc.step, exc.errno, exc.detail)
    else:
        msg = Error("container setup", 0, f"{type(exc).__name__}: {exc}")
    try:
        channel.send(msg)
    except OSError:
        pass


def _guarded(channel: Channel, body: Callable[[], None]) -> None:
    try:
        body()
    except BaseException as exc:
        _report(channel, exc)
        raise


def _run_a(
    plan: Plan,
    channel: Channel,
    channel_b: Channel,
    parents: tuple[Channel, Channel],
    body: Callable[[Plan, Channel], None],
    cgroup_fd: int | None = None,
) -> None:
    for end in parents:
        end.close()
    _guarded(channel, lambda: _enter_namespaces(plan, channel, cgroupns=cgroup_fd is None))
    forked: list[int] = []
    _guarded(channel, lambda: forked.append(_fork_b(cgroup_fd)))
    if forked[0] == 0:
        channel.close()
        _child(lambda: _guarded(channel_b, lambda: _run_b(plan, channel_b, body, cgroup_fd)))
    channel.send(Pid(forked[0]))
    os._exit(0)


def _fork_b(cgroup_fd: int | None) -> int:
    if cgroup_fd is None:
        return os.fork()
    with _Step(CLONE_STEP):
        return k.fork_into_cgroup(cgroup_fd)  # safe here: A is single-threaded (see its docstring)


def _run_b(plan: Plan, channel: Channel, body: Callable[[Plan, Channel], None], cgroup_fd: int | None) -> None:
    if cgroup_fd is not None:
        # B was created in the cgroup; the cgroup namespace is entered only now, so that its root is the
        # container's cgroup (and A, outside it, could create B there under nsdelegate)
        os.close(cgroup_fd)
        _enter_cgroupns(plan)
    body(plan, channel)


def _enter_cgroupns(plan: Plan) -> None:
    for flag, fd in plan.join:
        if flag == k.CLONE_NEWCGROUP:
            with _Step("join namespace", _ns_name(flag)):
                k.setns(fd, flag)
    if plan.new_namespaces & k.CLONE_NEWCGROUP:
        with _Step("unshare namespaces", "cgroup"):
            k.unshare(k.CLONE_NEWCGROUP)


def _enter_namespaces(plan: Plan, channel: Channel, cgroupns: bool = True) -> None:
    _stdio(plan)
    if plan.process.oom_score_adj is not None:
        # here, in the runtime's namespaces: inherited by B; a non-dumpable process in a new user
        # namespace could not open its own /proc files (they belong to the host's root)
        with _Step("set oom_score_adj", f"/proc/self/oom_score_adj={plan.process.oom_score_adj}"):
            _write_proc_self("oom_score_adj", str(plan.process.oom_score_adj))
    with _Step("join user namespace"):
        for flag, fd in plan.join:
            if flag == k.CLONE_NEWUSER:
                k.setns(fd, k.CLONE_NEWUSER)
    if plan.new_user:
        with _Step("unshare user namespace"):
            k.unshare(k.CLONE_NEWUSER)
    channel.send(Sync())
    channel.expect(Go, "the runtime went away")
    if plan.new_user:
        with _Step("become root in the user namespace"):
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
    elif any(flag == k.CLONE_NEWUSER for flag, _ in plan.join):
        # as runc: the host's root is unmapped in a joined user namespace (its mounts then fail with
        # EOVERFLOW); become its root where it maps 0, and carry on as we are where it does not
        with _Step("become root in the joined user namespace"):
            try:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
    skip = k.CLONE_NEWUSER if cgroupns else k.CLONE_NEWUSER | k.CLONE_NEWCGROUP  # B enters the cgroupns itself
    for flag, fd in plan.join:
        if not flag & skip:
            with _Step("join namespace", _ns_name(flag)):
                k.setns(fd, flag)
    unshare = plan.new_namespaces & ~skip
    if unshare:
        with _Step("unshare namespaces"):
            k.unshare(unshare)
    if plan.new_namespaces & k.CLONE_NEWNET:
        with _Step("bring up lo"):
            k.loopback_up()
    if plan.time_offsets:
        # /proc/self files of a non-dumpable process belong to the host's root: writable in a new user
        # namespace only while dumpable. A is not in the container's pid namespace, so nothing there sees it.
        with _Step("write time offsets", "/proc/self/timens_offsets"):
            k.prctl(k.PR_SET_DUMPABLE, 1)
            try:
                _write("/proc/self/timens_offsets", plan.time_offsets)
            finally:
                k.prctl(k.PR_SET_DUMPABLE, 0)


def _write_proc_self(name: str, value: str) -> None:
    """Write /proc/self/<name>, refusing anything that is not procfs (a bind mount over /proc)."""
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if k.fs_type(fd) != k.PROC_SUPER_MAGIC:
            raise SetupError("write /proc", errno.EXDEV, f"/proc/self/{name} is not on procfs")
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _ns_name(flag: int) -> str:
    return next((name for name, f in k.NAMESPACE_FLAGS.items() if f == flag), hex(flag))


def _stdio(plan: Plan) -> None:
    if plan.stdio is None:
        return
    with _Step("set up stdio"):
        for target, fd in enumerate(plan.stdio):
            os.dup2(fd, target)


def _init_b(plan: Plan, channel: Channel) -> None:
    """The container's init: one linear pipeline, as runc's standard_init_linux.go."""
    spec = plan.spec
    assert spec is not None
    linux = spec.linux
    with _Step("setsid"):
        os.setsid()
    if plan.new_keyring:
        try:
            k.join_session_keyring(plan.new_keyring)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EACCES):  # no keyctl (or forbidden by seccomp/LSM): runc too
                raise SetupError("join session keyring", exc.errno or errno.EIO, plan.new_keyring) from None
    in_userns = plan.new_user or any(flag == k.CLONE_NEWUSER for flag, _ in plan.join)
    root = None
    if plan.mount_setup:
        root = rootfs.prepare_root(plan.rootfs, linux.rootfs_propagation)
        for i, m in enumerate(spec.mounts):
            rootfs.mount_entry(
                root,
                m,
                cgroup_paths=plan.cgroup_paths,
                cgroup_version=plan.cgroup_version,
                cgroupns=bool(plan.new_namespaces & k.CLONE_NEWCGROUP),
                netns=bool(plan.new_namespaces & k.CLONE_NEWNET) or linux.namespace("network") is not None,
                tree=plan.idmapped.get(i, -1),
            )
        if rootfs.needs_dev_setup(spec):
            rootfs.create_devices(root, rootfs.DEFAULT_DEVICES + linux.devices, in_userns)
            rootfs.setup_dev_links(root)
    channel.send(Hooks())
    state = channel.expect(Go, "the runtime went away").state or {}
    run_hooks("createContainer", spec.hooks.create_container, state)
    if root is not None:
        (rootfs.move_root if plan.no_pivot else rootfs.pivot_root)(root)
        rootfs.apply_root_propagation(linux.rootfs_propagation)
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
    # sysctls before read-only paths: a pod sandbox makes /proc/sys read-only (runc's order)
    for key, value in linux.sysctl:
        with _Step("set sysctl", f"{key}={value}"):
            rootfs.write_sysctl(key, value)
    if root is not None:
        for path in linux.readonly_paths:
            rootfs.readonly_path(path)
        for path in linux.masked_paths:
            rootfs.mask_path(path)
        if spec.root.readonly:
            rootfs.readonly_root()
    if plan.terminal:
        _setup_console(plan, channel)
    _process_setup(plan, channel)
    argv0 = _resolve_executable(plan.process)
    channel.send(Ready())
    with _Step("wait for start", "exec.fifo"):
        # blocks until start opens the fifo (reopened through the container's own procfs, which shows this
        # process's fds); the fd stays open, close-on-exec, until execve: start reads the fifo to EOF
        fd = os.open(f"/proc/self/fd/{plan.exec_fifo}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
    run_hooks("startContainer", spec.hooks.start_container, state)
    _execve(plan, argv0)


def _exec_b(plan: Plan, channel: Channel) -> None:
    with _Step("setsid"):
        os.setsid()
    if plan.terminal:
        _setup_console(plan, channel)
    _process_setup(plan, channel)
    argv0 = _resolve_executable(plan.process)
    _execve(plan, argv0)


def _setup_console(plan: Plan, channel: Channel) -> None:
    """A pty from the container's own devpts (so ``tty`` says /dev/pts/N inside): the slave becomes the
    controlling terminal and stdio, the master goes to the runtime over the channel."""
    with _Step("allocate a terminal", "/dev/ptmx"):
        master, slave = os.openpty()
        if plan.process.console_size:
            height, width = plan.process.console_size
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        channel.send(Console(name=os.ttyname(slave), fd=master))
        os.close(master)
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)


def _process_setup(plan: Plan, channel: Channel) -> None:
    """Process attributes common to init and exec, in runc's order; ends in the cwd, ready to exec."""
    process = plan.process
    security.apply_rlimits(plan.rlimits)
    if process.no_new_privileges:
        with _Step("set no_new_privs"):
            k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
    if plan.seccomp and not process.no_new_privileges:
        _load_seccomp(plan.seccomp, channel)  # needs CAP_SYS_ADMIN: before capabilities are dropped
    security.apply_credentials(process, plan.caps)
    with _Step("chdir", process.cwd):
        os.chdir(process.cwd)
        # an fd of the host (/proc/self/fd/N) or a path that left the root: getcwd says "(unreachable)"
        # and fails (CVE-2024-21626)
        try:
            os.getcwd()
        except FileNotFoundError:
            raise SetupError("chdir", errno.EPERM, f"{process.cwd}: outside the container's root") from None
    if plan.seccomp and process.no_new_privileges:
        _load_seccomp(plan.seccomp, channel)  # as late as possible: fewer syscalls of ours go through it


def _load_seccomp(seccomp: tuple[bytes, int], channel: Channel) -> None:
    with _Step("load seccomp filter"):
        fd = k.seccomp_set_filter(*seccomp)
    if seccomp[1] & k.SECCOMP_FILTER_FLAG_NEW_LISTENER:
        # the runtime passes the notify fd to the agent; the container must not keep it (it could answer
        # its own notifications)
        with _Step("send seccomp notify fd"):
            channel.send(SeccompFd(fd=fd))
        with _Step("close seccomp notify fd"):
            os.close(fd)


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


def _execve(plan: Plan, path: str) -> None:
    process = plan.process
    security.apply_lsm_on_exec(process)
    # nothing of the runtime's passes into the container: every fd >= 3 but the preserved ones closes at
    # execve (CVE-2024-21626: a leaked host fd is a way out)
    with _Step("mark fds close-on-exec"):
        k.close_range_cloexec(3 + plan.preserve_fds)
    with _Step("exec", process.args[0]):
        os.execve(path, list(process.args), _env(process))
