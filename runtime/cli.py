"""``pyoci``: a runc-compatible command line over the runtime core.

It accepts what containerd's runc shim passes to runc (``--root --log --log-format json create --bundle
--pid-file ...``), so ``ctr run --runc-binary pyoci`` drives pyoci through containerd's own shim.
Errors go to stderr as ``pyoci: <message>`` and, with ``--log``, as runc-style JSON lines (level
"error") that the runc shim quotes in its "OCI runtime create failed" messages. Exit status 1 on error.
"""

from __future__ import annotations

import os
import sys

from . import __version__

# Imports are lazy: `pyoci --version` answers before argparse is built, and each command imports what it uses.
_VALUE_OPTIONS = {"--root", "--log", "--log-format", "--criu", "--rootless"}  # global options that take a value
_FLAG_OPTIONS = {"--debug", "--systemd-cgroup"}
_VERSION = ("-v", "--version")


def _log():
    import logging

    return logging.getLogger("pyoci")


def _scan(argv: list[str]) -> tuple[bool, str | None]:
    """(whether ``--version`` comes before the command, the command): the global options are skipped, so the
    parser is built for that one command only. (None: no command, or an option this scan does not know.)"""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VERSION:
            return True, None
        if arg in _FLAG_OPTIONS or (arg.partition("=")[0] in _VALUE_OPTIONS and "=" in arg):
            i += 1
        elif arg in _VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            return False, None
        else:
            return False, arg
    return False, None


def _setup_logging(args) -> None:
    import logging

    class JSONFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            import datetime
            import json

            now = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            return json.dumps(
                {
                    "level": record.levelname.lower().replace("warning", "warn"),
                    "msg": record.getMessage(),
                    "time": now.isoformat().replace("+00:00", "Z"),
                }
            )

    root = logging.getLogger()
    root.setLevel(logging.DEBUG if args.debug else logging.INFO)
    if args.log:
        handler: logging.Handler = logging.FileHandler(args.log)
        handler.setFormatter(
            JSONFormatter() if args.log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        )
        root.addHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("pyoci: %(levelname)s: %(message)s"))
    root.addHandler(stderr)


def parse_signal(value: str) -> int:
    import argparse
    import signal

    text = value.upper()
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(getattr(signal.Signals, name))
    except AttributeError:
        raise argparse.ArgumentTypeError(f"unknown signal {value!r}") from None


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` tells it (argparse's default formatter imports shutil:
    with bz2, lzma and zlib, ~4 ms of every command)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _parser(only: str | None = None):
    """The command line; with ``only``, just that command's subparser (the others cost time, not behaviour)."""
    import argparse

    class Formatter(argparse.HelpFormatter):
        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width=None) -> None:
            super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)

    p = argparse.ArgumentParser(
        prog="pyoci", description="pyoci: an OCI runtime (runc-compatible CLI)", formatter_class=Formatter
    )
    p.add_argument("--root", default="/run/pyoci", help="state directory (default /run/pyoci)")
    p.add_argument("--log", default="", help="log file")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--criu", default="", help=argparse.SUPPRESS)
    p.add_argument("--rootless", default="", help=argparse.SUPPRESS)
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help: str, *, container: bool = True) -> argparse.ArgumentParser:
        s = (
            sub.add_parser(name, help=help, formatter_class=Formatter)
            if only in (None, name)
            else argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
        )
        if container:
            s.add_argument("id")
        return s

    for name in ("create", "run"):
        s = cmd(name, "create a container" if name == "create" else "create, start and wait for a container")
        s.add_argument("--bundle", "-b", default=".")
        s.add_argument("--pid-file", default="")
        s.add_argument("--console-socket", default="")
        s.add_argument("--no-pivot", action="store_true")
        s.add_argument("--no-new-keyring", action="store_true")
        s.add_argument("--preserve-fds", type=int, default=0)
        if name == "run":
            s.add_argument("--detach", "-d", action="store_true")
    cmd("start", "start a created container")
    s = cmd("state", "print a container's state as JSON")
    s = cmd("kill", "signal a container's init (or all its processes)")
    s.add_argument("signal", nargs="?", default="SIGTERM")
    s.add_argument("--all", "-a", action="store_true")
    s = cmd("delete", "delete a container")
    s.add_argument("--force", "-f", action="store_true")
    s = cmd("exec", "run a process in a running container")
    s.add_argument("command_args", nargs=argparse.REMAINDER)
    s.add_argument("--process", "-p", default="")
    s.add_argument("--detach", "-d", action="store_true")
    s.add_argument("--pid-file", default="")
    s.add_argument("--tty", "-t", action="store_true")
    s.add_argument("--console-socket", default="")
    s.add_argument("--cwd", default="")
    s.add_argument("--env", "-e", action="append", default=[])
    s.add_argument("--user", "-u", default="")
    s.add_argument("--cap", action="append", default=[])
    s.add_argument("--no-new-privs", action="store_true")
    s.add_argument("--preserve-fds", type=int, default=0)
    s = cmd("ps", "list a container's processes")
    s.add_argument("--format", "-f", default="table", choices=["table", "json"])
    s.add_argument("ps_args", nargs="*")
    cmd("pause", "freeze a container's processes")
    cmd("resume", "thaw a paused container")
    s = cmd("update", "change a running container's resources")
    s.add_argument("--resources", "-r", default="")
    s.add_argument("--memory", type=int)
    s.add_argument("--memory-swap", type=int)
    s.add_argument("--pids-limit", type=int)
    s.add_argument("--cpu-shares", type=int)
    s.add_argument("--cpu-quota", type=int)
    s.add_argument("--cpu-period", type=int)
    s = cmd("list", "list containers", container=False)
    s.add_argument("--format", "-f", default="table", choices=["table", "json"])
    s.add_argument("--quiet", "-q", action="store_true")
    cmd("features", "print what this runtime supports (JSON)", container=False)
    s = cmd("spec", "write a default config.json", container=False)
    s.add_argument("--bundle", "-b", default=".")
    s.add_argument("--rootless", action="store_true")
    s = cmd("checkpoint", "checkpoint a running container with criu")
    s.add_argument("--image-path", default="checkpoint")
    s.add_argument("--work-path", default="")
    s.add_argument("--leave-running", action="store_true")
    s.add_argument("--tcp-established", action="store_true")
    s.add_argument("--ext-unix-sk", action="store_true")
    s.add_argument("--file-locks", action="store_true")
    s.add_argument("--manage-cgroups-mode", default="soft")
    s.add_argument("--empty-ns", action="append", default=[])
    s = cmd("restore", "restore a container from a criu checkpoint")
    s.add_argument("--image-path", default="checkpoint")
    s.add_argument("--work-path", default="")
    s.add_argument("--bundle", "-b", default=".")
    s.add_argument("--detach", "-d", action="store_true")
    s.add_argument("--pid-file", default="")
    s.add_argument("--tcp-established", action="store_true")
    s.add_argument("--ext-unix-sk", action="store_true")
    s.add_argument("--file-locks", action="store_true")
    s.add_argument("--manage-cgroups-mode", default="soft")
    s = cmd("events", "print container statistics")
    s.add_argument("--stats", action="store_true")
    s.add_argument("--interval", default="5s")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    version, command = _scan(argv)
    if version:
        print(f"pyoci version {__version__}\nspec: 1.2.0")
        return 0
    args = _parser(command if command in _COMMANDS else None).parse_args(argv)
    if args.version:
        print(f"pyoci version {__version__}\nspec: 1.2.0")
        return 0
    if not args.command:
        _parser().print_usage(sys.stderr)
        return 2
    _setup_logging(args)
    from .errors import PyociError

    try:
        return _COMMANDS[args.command](args)
    except PyociError as exc:
        _log().error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130


# ------------------------------------------------------------------------------------------- commands


def _store(args):
    from .state import Store

    return Store(args.root)


def _load(args):
    from .container import Container

    return Container.load(_store(args), args.id)


def _send_console(path: str, master: int | None) -> None:
    """Hand a pty master to whoever listens on ``--console-socket`` (runc's protocol: the pty's name as
    data, the fd as SCM_RIGHTS), then drop our copy."""
    import socket

    from .errors import PyociError

    if master is None:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            # the name is a label for the receiver (go-runc names the file with it); the pty is the container's,
            # which the host cannot name (ttyname fails outside the container's mount namespace)
            socket.send_fds(sock, [b"/dev/ptmx"], [master])
    except OSError as exc:
        raise PyociError(f"--console-socket {path}: {exc.strerror or exc}") from None
    finally:
        os.close(master)


def _check_terminal(terminal: bool, console_socket: str) -> None:
    from .errors import ConfigError

    if terminal and not console_socket:
        raise ConfigError("process.terminal", "a terminal needs --console-socket to hand its master to", source="pyoci")
    if console_socket and not terminal:
        raise ConfigError("process.terminal", "--console-socket given but the process has no terminal", source="pyoci")


def cmd_create(args) -> int:
    from .container import Container
    from .spec import load_spec

    spec = load_spec(args.bundle)
    _check_terminal(bool(spec.process and spec.process.terminal), args.console_socket)
    container = Container.create(_store(args), args.id, args.bundle, _create_options(args))
    _send_console(args.console_socket, container.console)
    return 0


def cmd_run(args) -> int:
    from . import kernel
    from .container import Container
    from .spec import load_spec

    spec = load_spec(args.bundle)
    _check_terminal(bool(spec.process and spec.process.terminal), args.console_socket)
    if not args.detach:
        kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    container = Container.create(_store(args), args.id, args.bundle, _create_options(args))
    _send_console(args.console_socket, container.console)
    container.start()
    if args.detach:
        return 0
    status = _wait_forwarding_signals(container.state.pid)
    container.delete(force=True)
    return status


def _create_options(args):
    from .container import CreateOptions

    return CreateOptions(
        no_pivot=args.no_pivot,
        no_new_keyring=args.no_new_keyring,
        pid_file=args.pid_file or None,
        preserve_fds=_preserved_fds(args.preserve_fds),
        systemd_cgroup=args.systemd_cgroup,
    )


def _preserved_fds(requested: int) -> int:
    """How many fds from 3 on pass into the container: --preserve-fds, plus systemd's LISTEN_FDS sockets
    (runc passes those on too). Every other fd of the caller is closed at the container's execve."""
    from .errors import ConfigError

    if requested < 0:
        raise ConfigError("--preserve-fds", f"must not be negative, got {requested}", source="pyoci")
    try:
        listen = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        listen = 0
    return max(requested, listen if listen > 0 else 0)


def _wait_forwarding_signals(pid: int) -> int:
    """Wait for ``pid`` (reaping any other orphan on the way); forward SIGINT/SIGTERM/SIGHUP to it."""
    import signal

    from .procfs import exit_code

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        if got == pid:
            return exit_code(status)


def cmd_start(args) -> int:
    _load(args).start()
    return 0


def cmd_state(args) -> int:
    import json

    print(json.dumps(_load(args).oci_state().to_json(), indent=2))
    return 0


def cmd_kill(args) -> int:
    import argparse

    try:
        sig = parse_signal(args.signal)
    except argparse.ArgumentTypeError as exc:
        from .errors import PyociError

        raise PyociError(str(exc)) from None
    _load(args).kill(sig, all_processes=args.all)
    return 0


def cmd_delete(args) -> int:
    from .errors import NotFound

    try:
        container = _load(args)
    except NotFound:
        if args.force:
            _store(args).remove(args.id)  # a create killed before its first state write leaves only the dir
            return 0
        raise
    container.delete(force=args.force)
    return 0


def cmd_exec(args) -> int:
    from dataclasses import replace

    from . import kernel
    from .errors import ConfigError
    from .spec import Capabilities, User, loads, parse_process

    container = _load(args)
    if args.process:
        try:
            with open(args.process, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError("", f"cannot read {args.process}: {exc}", source="process") from None
        process = parse_process(loads(raw, source=args.process), source=args.process)
    else:
        base = container.spec.process
        if not args.command_args:
            raise ConfigError("args", "exec needs a command", source="exec")
        assert base is not None
        process = replace(base, args=tuple(args.command_args), terminal=args.tty)
        if args.cwd:
            process = replace(process, cwd=args.cwd)
        if args.env:
            process = replace(process, env=process.env + tuple(args.env))
        if args.user:
            uid, _, gid = args.user.partition(":")
            process = replace(process, user=User(uid=int(uid), gid=int(gid or 0)))
        if args.cap and process.capabilities:
            caps = process.capabilities
            extra = tuple(args.cap)
            process = replace(
                process,
                capabilities=Capabilities(
                    caps.bounding + extra,
                    caps.effective + extra,
                    caps.inheritable,
                    caps.permitted + extra,
                    caps.ambient,
                ),
            )
        if args.no_new_privs:
            process = replace(process, no_new_privileges=True)
    _check_terminal(process.terminal, args.console_socket)
    if not args.detach:
        kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    pid, console = container.exec(process, preserve_fds=_preserved_fds(args.preserve_fds))
    _send_console(args.console_socket, console)
    if args.pid_file:
        from .container import _write_pid_file

        _write_pid_file(args.pid_file, pid)
    if args.detach:
        return 0
    return _wait_forwarding_signals(pid)


def cmd_ps(args) -> int:
    import json

    pids = _load(args).pids()
    if args.format == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def cmd_pause(args) -> int:
    _load(args).pause()
    return 0


def cmd_resume(args) -> int:
    _load(args).resume()
    return 0


def cmd_update(args) -> int:
    from .errors import ConfigError
    from .spec import loads, parse_resources

    data: dict = {}
    if args.resources:
        try:
            if args.resources == "-":
                text = sys.stdin.read()
            else:
                with open(args.resources) as f:
                    text = f.read()
        except OSError as exc:
            raise ConfigError("", f"cannot read {args.resources}: {exc}", source="resources") from None
        data = loads(text, source="resources")
    for key, flag in (("limit", args.memory), ("swap", args.memory_swap)):
        if flag is not None:
            data.setdefault("memory", {})[key] = flag
    if args.pids_limit is not None:
        data["pids"] = {"limit": args.pids_limit}
    for key, flag in (("shares", args.cpu_shares), ("quota", args.cpu_quota), ("period", args.cpu_period)):
        if flag is not None:
            data.setdefault("cpu", {})[key] = flag
    for warning in _load(args).update(parse_resources(data, source="resources")):
        _log().warning("%s", warning)
    return 0


def cmd_list(args) -> int:
    import json

    from .container import Container

    store = _store(args)
    states = []
    for cid in store.list():
        try:
            states.append(Container.load(store, cid).oci_state())
        except Exception as exc:  # a half-deleted container must not break listing
            _log().debug("list: %s: %s", cid, exc)
    if args.quiet:
        print("\n".join(s.id for s in states))
    elif args.format == "json":
        print(json.dumps([s.to_json() for s in states]))
    else:
        print(f"{'ID':<24}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}{'CREATED':<32}OWNER")
        for s in states:
            print(f"{s.id:<24}{s.pid:<10}{s.status:<10}{s.bundle:<40}{s.created:<32}{s.owner}")
    return 0


def cmd_features(args) -> int:
    import json

    from .features import features

    print(json.dumps(features(), indent=2))
    return 0


def cmd_spec(args) -> int:
    import json

    from .features import default_spec

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        from .errors import PyociError

        raise PyociError(f"{path} already exists")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent=2)
    return 0


def cmd_events(args) -> int:
    import json

    from .errors import Unsupported

    container = _load(args)
    if not args.stats:
        raise Unsupported("events: only --stats is supported")
    from .cgroups.stats import events_data

    data = events_data(container.cgroup.stats(), container.cgroup.version)
    print(json.dumps({"type": "stats", "id": container.id, "data": data}))
    return 0


def cmd_checkpoint(args) -> int:
    from .checkpoint import CheckpointOptions, checkpoint

    options = CheckpointOptions(
        image_path=args.image_path,
        work_path=args.work_path,
        leave_running=args.leave_running,
        tcp_established=args.tcp_established,
        ext_unix_sk=args.ext_unix_sk,
        file_locks=args.file_locks,
        manage_cgroups_mode=args.manage_cgroups_mode,
        empty_ns=tuple(args.empty_ns),
    )
    container = _load(args)
    checkpoint(container, options)
    if not args.leave_running:
        container.delete(force=True)  # as runc: a checkpointed container is gone
    return 0


def cmd_restore(args) -> int:
    from . import kernel
    from .checkpoint import RestoreOptions, restore
    from .container import CreateOptions

    options = RestoreOptions(
        image_path=args.image_path,
        work_path=args.work_path,
        tcp_established=args.tcp_established,
        ext_unix_sk=args.ext_unix_sk,
        file_locks=args.file_locks,
        manage_cgroups_mode=args.manage_cgroups_mode,
        create=CreateOptions(pid_file=args.pid_file or None, systemd_cgroup=args.systemd_cgroup),
    )
    if not args.detach:
        kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    container = restore(_store(args), args.id, args.bundle, options)
    if args.detach:
        return 0
    status = _wait_forwarding_signals(container.state.pid)
    container.delete(force=True)
    return status


_COMMANDS = {
    "create": cmd_create,
    "run": cmd_run,
    "start": cmd_start,
    "state": cmd_state,
    "kill": cmd_kill,
    "delete": cmd_delete,
    "exec": cmd_exec,
    "ps": cmd_ps,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "update": cmd_update,
    "list": cmd_list,
    "features": cmd_features,
    "spec": cmd_spec,
    "events": cmd_events,
    "checkpoint": cmd_checkpoint,
    "restore": cmd_restore,
}


if __name__ == "__main__":
    sys.exit(main())
