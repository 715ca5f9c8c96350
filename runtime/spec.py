"""config.json as typed, validated objects (OCI runtime spec 1.x, Linux; pyoci implements up to 1.2).

Everything is checked here, before anything touches the kernel: wrong types and impossible values raise
:class:`ConfigError` naming the JSON path (``linux.resources.memory.limit: expected integer, got "1G"``),
hostile input included (nesting, sizes, numbers out of the kernel's range, NUL bytes). Unknown fields are
ignored, for forward compatibility; settings pyoci knows but does not implement, and a config newer than
1.2, become :attr:`Spec.warnings`. The rest of the runtime reads these objects only; it never looks at the
raw JSON again.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import field
from pathlib import Path

from .errors import ConfigError
from .records import record

TYPE_CHECKING = False  # typing costs ~3 ms to import; the annotations are strings
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("pyoci.runtime")

VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.+-]+)?$")
KNOWN_MINOR = 2  # the newest runtime-spec 1.x minor pyoci implements; newer 1.x configs run with a warning
MAX_CONFIG_BYTES = 256 * 2**20  # a 50 MB annotation fits; a config.json the size of the disk does not
MAX_DEPTH = 100  # how deep a too-deep config.json is searched for the field to name in the error
MAJOR_MAX, MINOR_MAX = 2**12 - 1, 2**20 - 1  # Linux dev_t: 12-bit major, 20-bit minor
# Settings of runtime-spec that pyoci does not implement: present, they are ignored with a warning.
UNSUPPORTED = (
    (("linux", "resources", "network"), "net_cls/net_prio cgroups are not supported"),
    (("linux", "resources", "rdma"), "rdma cgroup limits are not supported"),
    (("linux", "mountLabel"), "SELinux mount labels are not supported"),
    (("linux", "intelRdt"), "Intel RDT is not supported"),
    (("linux", "personality"), "execution domains (personality) are not supported"),
    (("linux", "netDevices"), "moving network devices into the container is not supported"),
    (("linux", "memoryPolicy"), "NUMA memory policies are not supported"),
    (("process", "ioPriority"), "I/O priorities are not supported"),
    (("process", "scheduler"), "scheduling policies are not supported"),
    (("process", "execCPUAffinity"), "CPU affinity for exec is not supported"),
)
IDMAP_MAX_LINES = 340  # ranges in one uid_map/gid_map (Linux 4.15+)
NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
RLIMITS = tuple(
    (
        "RLIMIT_CPU RLIMIT_FSIZE RLIMIT_DATA RLIMIT_STACK RLIMIT_CORE RLIMIT_RSS RLIMIT_NPROC RLIMIT_NOFILE "
        "RLIMIT_MEMLOCK RLIMIT_AS RLIMIT_LOCKS RLIMIT_SIGPENDING RLIMIT_MSGQUEUE RLIMIT_NICE RLIMIT_RTPRIO "
        "RLIMIT_RTTIME"
    ).split()
)
CAPABILITIES = tuple(
    (
        "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID "
        "CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW "
        "CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT "
        "CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD "
        "CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG "
        "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
    ).split()
)
CAP_NUMBER = {name: i for i, name in enumerate(CAPABILITIES)}
SECCOMP_ACTIONS = tuple(
    (
        "SCMP_ACT_KILL SCMP_ACT_KILL_PROCESS SCMP_ACT_KILL_THREAD SCMP_ACT_TRAP SCMP_ACT_ERRNO "
        "SCMP_ACT_TRACE SCMP_ACT_ALLOW SCMP_ACT_LOG SCMP_ACT_NOTIFY"
    ).split()
)
SECCOMP_OPS = tuple(
    ("SCMP_CMP_NE SCMP_CMP_LT SCMP_CMP_LE SCMP_CMP_EQ SCMP_CMP_GE SCMP_CMP_GT SCMP_CMP_MASKED_EQ").split()
)
SECCOMP_FLAGS = tuple(
    (
        "SECCOMP_FILTER_FLAG_TSYNC SECCOMP_FILTER_FLAG_LOG SECCOMP_FILTER_FLAG_SPEC_ALLOW "
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
    ).split()
)
PROPAGATIONS = (
    "",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "shared",
    "rshared",
    "unbindable",
    "runbindable",
)
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_U16 = 2**16 - 1  # struct winsize
_U32 = 2**32 - 1
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid: never a container's user
_I64 = 2**63 - 1
_U64 = 2**64 - 1


# --------------------------------------------------------------------------------------------- model


@record
class Root:
    path: str
    readonly: bool = False


@record
class Mount:
    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()
    uid_mappings: tuple[IDMapping, ...] = ()  # idmapped mount: ids on the source -> ids seen on the mount
    gid_mappings: tuple[IDMapping, ...] = ()


@record
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


@record
class Capabilities:
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@record
class Rlimit:
    type: str
    soft: int
    hard: int


@record
class Process:
    args: tuple[str, ...]
    cwd: str = "/"
    env: tuple[str, ...] = ()
    terminal: bool = False
    console_size: tuple[int, int] | None = None  # (height, width)
    user: User = field(default_factory=User)
    capabilities: Capabilities | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    apparmor_profile: str = ""
    selinux_label: str = ""
    oom_score_adj: int | None = None


@record
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@record
class Hooks:
    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()


@record
class Namespace:
    type: str
    path: str = ""


@record
class IDMapping:
    container_id: int
    host_id: int
    size: int


@record
class Device:
    type: str
    path: str
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@record
class DeviceRule:
    allow: bool
    type: str = "a"
    major: int | None = None  # None = wildcard
    minor: int | None = None
    access: str = "rwm"


@record
class Memory:
    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernel_tcp: int | None = None
    swappiness: int | None = None
    disable_oom_killer: bool | None = None
    use_hierarchy: bool | None = None


@record
class CPU:
    shares: int | None = None
    quota: int | None = None
    burst: int | None = None
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str = ""
    mems: str = ""
    idle: int | None = None


@record
class WeightDevice:
    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@record
class ThrottleDevice:
    major: int
    minor: int
    rate: int


@record
class BlockIO:
    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[WeightDevice, ...] = ()
    throttle_read_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_bps_device: tuple[ThrottleDevice, ...] = ()
    throttle_read_iops_device: tuple[ThrottleDevice, ...] = ()
    throttle_write_iops_device: tuple[ThrottleDevice, ...] = ()


@record
class HugepageLimit:
    page_size: str
    limit: int


@record
class Resources:
    devices: tuple[DeviceRule, ...] = ()
    memory: Memory | None = None
    cpu: CPU | None = None
    pids_limit: int | None = None
    block_io: BlockIO | None = None
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: tuple[tuple[str, str], ...] = ()


@record
class SeccompArg:
    index: int
    value: int
    op: str
    value_two: int = 0


@record
class SeccompRule:
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[SeccompArg, ...] = ()


@record
class Seccomp:
    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    syscalls: tuple[SeccompRule, ...] = ()
    listener_path: str = ""  # the seccomp agent's unix socket (SCMP_ACT_NOTIFY)
    listener_metadata: str = ""  # passed to the agent in the container process state


@record
class Linux:
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()
    time_offsets: tuple[tuple[str, int, int], ...] = ()  # (clock, secs, nanosecs)
    devices: tuple[Device, ...] = ()
    cgroups_path: str = ""
    resources: Resources | None = None
    rootfs_propagation: str = ""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    sysctl: tuple[tuple[str, str], ...] = ()
    seccomp: Seccomp | None = None
    mount_label: str = ""

    def namespace(self, kind: str) -> Namespace | None:
        return next((ns for ns in self.namespaces if ns.type == kind), None)


@record
class Spec:
    oci_version: str
    root: Root
    process: Process | None = None
    hostname: str = ""
    domainname: str = ""
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks = field(default_factory=Hooks)
    annotations: tuple[tuple[str, str], ...] = ()
    linux: Linux = field(default_factory=Linux)
    # one line each, "config.json: <field>: <why> ; ignored": what pyoci runs without (see UNSUPPORTED)
    warnings: tuple[str, ...] = ()

    def log_warnings(self) -> None:
        """Log :attr:`warnings` on the ``pyoci.runtime`` logger (once per container: at create)."""
        for warning in self.warnings:
            log.warning("%s", warning)


# -------------------------------------------------------------------------------------------- parser


class _Reader:
    """Typed accessors over one JSON object, raising ConfigError with the full JSON path."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        self.path, self.source = path, source
        if not isinstance(data, dict):
            self.fail("", f"expected object, got {_kind(data)}")
        self.data: dict[str, Any] = data

    def at(self, key: str) -> str:
        key = _shown_key(key)
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, reason: str) -> None:
        raise ConfigError(self.at(key) if key else self.path, reason, source=self.source)

    def _typed(self, key: str, types: type | tuple[type, ...], name: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "required")
            return None
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            self.fail(key, f"expected {name}, got {_show(value)}")
        return value

    def str(self, key: str, default: str = "", required: bool = False) -> str:
        value = self._typed(key, str, "string", required)
        if value is None:
            return default
        _text(value, self.at(key), self.source)
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        value = self._typed(key, bool, "boolean", False)
        return default if value is None else value

    def opt_bool(self, key: str) -> bool | None:
        return self._typed(key, bool, "boolean", False)

    def int(self, key: str, lo: int = -_I64 - 1, hi: int = _U64, required: bool = False) -> int | None:
        value = self._typed(key, int, "integer", required)
        if value is not None and not lo <= value <= hi:
            self.fail(key, f"{value} is out of range [{lo}, {hi}]")
        return value

    def obj(self, key: str, required: bool = False) -> _Reader | None:
        value = self._typed(key, dict, "object", required)
        return None if value is None else _Reader(value, self.at(key), self.source)

    def list(self, key: str) -> list[Any]:
        return self._typed(key, list, "array", False) or []

    def objs(self, key: str) -> list[_Reader]:
        return [_Reader(item, f"{self.at(key)}[{i}]", self.source) for i, item in enumerate(self.list(key))]

    def strs(self, key: str) -> tuple[str, ...]:
        items = self.list(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"{self.at(key)}[{i}]", f"expected string, got {_show(item)}", source=self.source)
            _text(item, f"{self.at(key)}[{i}]", self.source)
        return tuple(items)

    def str_map(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self._typed(key, dict, "object", False) or {}
        for k, v in value.items():
            _text(k, f"{self.at(key)}.{_shown_key(k)}", self.source)
            if not isinstance(v, str):
                raise ConfigError(f"{self.at(key)}.{k}", f"expected string, got {_show(v)}", source=self.source)
            _text(v, f"{self.at(key)}.{k}", self.source)
        return tuple(value.items())


def _text(value: str, path: str, source: str) -> None:
    """Strings become paths, argv, files' contents: no NUL bytes, no lone surrogates (not encodable)."""
    if "\x00" in value:
        raise ConfigError(path, "must not contain a NUL byte", source=source)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ConfigError(path, "is not valid Unicode (a lone surrogate escape)", source=source) from None


def _shown_key(key: str) -> str:
    """A key as it appears in an error's path: as is when printable, else quoted (a message is one line)."""
    shown = key.replace("\x00", "\\0")
    shown = shown if shown.isprintable() else repr(shown)
    return shown.encode("utf-8", "backslashreplace").decode()[:40]


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _kind(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _kind(value)
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _absolute(r: _Reader, key: str, value: str) -> str:
    if not value.startswith("/"):
        r.fail(key, f"must be an absolute path, got {value!r}")
    return value


def load_spec(bundle: str | Path) -> Spec:
    """Read and validate ``<bundle>/config.json`` (its warnings are in the result, not logged)."""
    return parse_spec(loads(read_config(bundle)))


def read_config(bundle: str | Path) -> bytes:
    """The bytes of ``<bundle>/config.json``, at most MAX_CONFIG_BYTES: read once, they can be both parsed
    (:func:`spec_from_bytes`) and kept (a container's config must not change after create)."""
    path = Path(bundle) / "config.json"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("", f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    return raw


def spec_from_bytes(raw: bytes) -> Spec:
    return parse_spec(loads(raw))


def loads(raw: bytes | str, source: str = "config.json") -> Any:
    """JSON text → Python objects; every failure (syntax, encoding, nesting too deep) is a ConfigError."""
    try:
        return json.loads(raw)
    except RecursionError:
        where = _deep_field(raw)
        raise ConfigError(where, f"nested too deeply (over ~{sys.getrecursionlimit()} levels)", source=source) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise ConfigError("", f"invalid JSON: {_short(str(exc))}", source=source) from None


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]')


def _deep_field(raw: bytes | str) -> str:
    """The JSON path where ``raw`` first nests deeper than MAX_DEPTH, for the error message: one pass over
    its strings and brackets, stopping there."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    stack: list[list[Any]] = []  # per open container: [label, "{" or "[", last key or current index]
    last = b""
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token in (b"{", b"["):
            if len(stack) >= MAX_DEPTH:
                path = "".join(label for label, _, _ in stack).lstrip(".")
                return path if len(path) <= 80 else path[:77] + "..."
            label = ""
            if stack:
                _, kind, at = stack[-1]
                label = f"[{at}]" if kind == b"[" else f".{at}"
            stack.append([label, token, 0 if token == b"[" else ""])
        elif token in (b"}", b"]"):
            if stack:
                stack.pop()
        elif token == b"," and stack and stack[-1][1] == b"[":
            stack[-1][2] += 1
        elif token == b":" and stack and last.startswith(b'"'):
            stack[-1][2] = last[1:-1].decode("utf-8", "backslashreplace")[:40]
        last = token
    return ""


def _short(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def parse_spec(data: Any) -> Spec:
    r = _Reader(data, "", "config.json")
    version = r.str("ociVersion", required=True)
    warnings = []
    match = VERSION.match(version)
    if not match:
        r.fail("ociVersion", f"{version!r} is not a version like 1.2.0")
    assert match is not None
    if match.group(1) != "1":
        r.fail("ociVersion", f"unsupported version {version!r} (pyoci runs 1.x configs)")
    if int(match.group(2)) > KNOWN_MINOR:
        warnings.append(
            f"config.json: ociVersion: {version} is newer than the 1.{KNOWN_MINOR} pyoci implements; "
            "settings added since are ignored"
        )
    warnings.extend(_unsupported(data))
    root_r = r.obj("root", required=True)
    assert root_r is not None
    root = Root(root_r.str("path", required=True), root_r.bool("readonly"))
    if not root.path:
        root_r.fail("path", "must not be empty")
    process_r = r.obj("process")
    hostname = r.str("hostname")
    linux_r = r.obj("linux")
    linux = _linux(linux_r) if linux_r else Linux()
    if hostname and not linux.namespace("uts"):
        r.fail("hostname", "setting the hostname needs a new uts namespace (linux.namespaces)")
    return Spec(
        oci_version=version,
        root=root,
        process=parse_process_reader(process_r) if process_r else None,
        hostname=hostname,
        domainname=r.str("domainname"),
        mounts=tuple(_mount(m, linux) for m in r.objs("mounts")),
        hooks=_hooks(r.obj("hooks")),
        annotations=r.str_map("annotations"),
        linux=linux,
        warnings=tuple(warnings),
    )


def _unsupported(data: dict[str, Any]) -> list[str]:
    out = []
    for keys, why in UNSUPPORTED:
        node: Any = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node not in (None, "", {}, []):
            out.append(f"config.json: {'.'.join(keys)}: {why}; ignored")
    return out


def parse_process(data: Any, source: str = "process.json") -> Process:
    """A ``process`` object on its own (``pyoci exec --process``, the shim's Exec spec)."""
    return parse_process_reader(_Reader(data, "", source))


def parse_resources(data: Any, source: str = "resources") -> Resources:
    """A ``linux.resources`` object on its own (``pyoci update``, the shim's Update)."""
    return _resources(_Reader(data, "", source))


def _mount(r: _Reader, linux: Linux) -> Mount:
    dest = r.str("destination", required=True)
    if not dest:
        r.fail("destination", "must not be empty")
    m = Mount(
        destination=dest,
        type=r.str("type"),
        source=r.str("source"),
        options=r.strs("options"),
        uid_mappings=_idmaps(r, "uidMappings"),
        gid_mappings=_idmaps(r, "gidMappings"),
    )
    _check_idmapped_mount(r, m, linux)
    return m


def _check_idmapped_mount(r: _Reader, m: Mount, linux: Linux) -> None:
    """Spec 1.1+: uidMappings/gidMappings (or the idmap/ridmap option) make an idmapped bind mount."""
    given = [opt for opt in ("idmap", "ridmap") if opt in m.options]
    if not given and not m.uid_mappings and not m.gid_mappings:
        return
    if len(given) > 1:
        r.fail("options", "idmap and ridmap exclude each other (ridmap is the recursive one)")
    if bool(m.uid_mappings) != bool(m.gid_mappings):
        r.fail(
            "uidMappings" if m.gid_mappings else "gidMappings",
            "an idmapped mount needs both uidMappings and gidMappings",
        )
    if m.type != "bind" and not {"bind", "rbind"} & set(m.options):
        r.fail("options", "an idmapped mount (uidMappings, idmap, ridmap) must be a bind mount (bind or rbind)")
    for key in ("uidMappings", "gidMappings"):
        if len(r.list(key)) > IDMAP_MAX_LINES:
            r.fail(key, f"at most {IDMAP_MAX_LINES} ranges (the kernel's limit)")
    if not m.uid_mappings and linux.namespace("user") is None:
        r.fail(
            "options", f"{given[0]} without uidMappings/gidMappings uses the container's user namespace; it has none"
        )


def parse_process_reader(r: _Reader) -> Process:
    args = r.strs("args")
    if not args:
        r.fail("args", "must name the program to run")
    cwd = _absolute(r, "cwd", r.str("cwd", "/", required=False) or "/")
    for i, item in enumerate(r.strs("env")):
        if "=" not in item:
            raise ConfigError(f"{r.at('env')}[{i}]", f"expected KEY=value, got {item!r}", source=r.source)
    console = r.obj("consoleSize")
    user_r = r.obj("user")
    user = User()
    if user_r:
        user = User(
            uid=user_r.int("uid", 0, _ID_MAX) or 0,
            gid=user_r.int("gid", 0, _ID_MAX) or 0,
            umask=user_r.int("umask", 0, 0o7777),
            additional_gids=tuple(_u32_list(user_r, "additionalGids")),
        )
    caps_r = r.obj("capabilities")
    caps = None
    if caps_r:
        caps = Capabilities(
            **{
                name.lower(): _caps(caps_r, name)
                for name in ("bounding", "effective", "inheritable", "permitted", "ambient")
            }
        )
    rlimits = []
    seen: set[str] = set()
    for rl in r.objs("rlimits"):
        kind = rl.str("type", required=True)
        if kind not in RLIMITS:
            rl.fail("type", f"unknown rlimit {kind!r}")
        if kind in seen:
            rl.fail("type", f"duplicate rlimit {kind}")
        seen.add(kind)
        soft, hard = _rlimit_value(rl, "soft"), _rlimit_value(rl, "hard")
        if soft > hard:
            rl.fail("soft", f"soft limit {soft} exceeds hard limit {hard}")
        rlimits.append(Rlimit(kind, soft, hard))
    return Process(
        args=args,
        cwd=cwd,
        env=r.strs("env"),
        terminal=r.bool("terminal"),
        console_size=(console.int("height", 0, _U16, True), console.int("width", 0, _U16, True)) if console else None,
        user=user,
        capabilities=caps,
        rlimits=tuple(rlimits),
        no_new_privileges=r.bool("noNewPrivileges"),
        apparmor_profile=r.str("apparmorProfile"),
        selinux_label=r.str("selinuxLabel"),
        oom_score_adj=r.int("oomScoreAdj", -1000, 1000),
    )


def _rlimit_value(r: _Reader, key: str) -> int:
    """0 to 2^63-1, or 2^64-1 (RLIM_INFINITY): the kernel's rlim_t as setrlimit takes it."""
    value = r.int(key, 0, _U64, required=True)
    assert value is not None
    if _I64 < value < _U64:
        r.fail(key, f"{value} is out of range [0, {_I64}] (or {_U64} for unlimited)")
    return value


def _u32_list(r: _Reader, key: str) -> list[int]:
    items = r.list(key)
    for i, item in enumerate(items):
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= _ID_MAX:
            raise ConfigError(
                f"{r.at(key)}[{i}]", f"expected an id in [0, {_ID_MAX}], got {_show(item)}", source=r.source
            )
    return items


def _caps(r: _Reader, key: str) -> tuple[str, ...]:
    names = r.strs(key)
    for i, name in enumerate(names):
        if name not in CAP_NUMBER:
            raise ConfigError(f"{r.at(key)}[{i}]", f"unknown capability {name!r}", source=r.source)
    return names


def _hooks(r: _Reader | None) -> Hooks:
    if r is None:
        return Hooks()
    kinds = {}
    for kind in HOOK_KINDS:
        hooks = []
        for h in r.objs(kind):
            path = _absolute(h, "path", h.str("path", required=True))
            timeout = h.int("timeout", -(2**31), 2**31 - 1)
            if timeout is not None and timeout <= 0:
                h.fail("timeout", f"must be positive, got {timeout}")
            hooks.append(Hook(path, h.strs("args"), h.strs("env"), timeout))
        kinds[re.sub(r"([A-Z])", r"_\1", kind).lower()] = tuple(hooks)
    return Hooks(**kinds)


def _idmaps(r: _Reader, key: str) -> tuple[IDMapping, ...]:
    maps = []
    for m in r.objs(key):
        maps.append(
            IDMapping(
                m.int("containerID", 0, _U32, True),
                m.int("hostID", 0, _U32, True),
                m.int("size", 1, _U32, True),
            )
        )
    return tuple(maps)


def _linux(r: _Reader) -> Linux:
    namespaces = []
    seen = set()
    for ns in r.objs("namespaces"):
        kind = ns.str("type", required=True)
        if kind not in NAMESPACES:
            ns.fail("type", f"unknown namespace type {kind!r} (known: {', '.join(NAMESPACES)})")
        if kind in seen:
            ns.fail("type", f"duplicate {kind} namespace")
        seen.add(kind)
        path = ns.str("path")
        if path:
            _absolute(ns, "path", path)
        namespaces.append(Namespace(kind, path))
    uid_maps, gid_maps = _idmaps(r, "uidMappings"), _idmaps(r, "gidMappings")
    user_ns = next((ns for ns in namespaces if ns.type == "user"), None)
    if (uid_maps or gid_maps) and (user_ns is None or user_ns.path):
        r.fail("uidMappings", "id mappings need a new user namespace in linux.namespaces")
    if user_ns and not user_ns.path and not (uid_maps and gid_maps):
        r.fail("uidMappings", "a new user namespace needs both uidMappings and gidMappings")
    offsets = []
    time_r = r.obj("timeOffsets")
    if time_r:
        if "time" not in seen:
            r.fail("timeOffsets", "needs a time namespace in linux.namespaces")
        for clock, value in time_r.data.items():
            if clock not in ("monotonic", "boottime"):
                time_r.fail(clock, "only monotonic and boottime clocks can be offset")
            o = _Reader(value, time_r.at(clock), r.source)
            offsets.append((clock, o.int("secs", -_I64 - 1, _I64) or 0, o.int("nanosecs", 0, 999_999_999) or 0))
    devices = []
    for d in r.objs("devices"):
        kind = d.str("type", required=True)
        if kind not in ("c", "b", "u", "p"):
            d.fail("type", f"unknown device type {kind!r} (c, b, u or p)")
        path = _absolute(d, "path", d.str("path", required=True))
        major = d.int("major", 0, MAJOR_MAX, required=kind != "p") or 0
        minor = d.int("minor", 0, MINOR_MAX, required=kind != "p") or 0
        devices.append(
            Device(
                kind,
                path,
                major,
                minor,
                d.int("fileMode", 0, 0o7777),
                d.int("uid", 0, _U32),
                d.int("gid", 0, _U32),
            )
        )
    cgroups_path = r.str("cgroupsPath")
    propagation = r.str("rootfsPropagation")
    if propagation not in PROPAGATIONS:
        r.fail("rootfsPropagation", f"unknown propagation {propagation!r}")
    resources = r.obj("resources")
    seccomp = r.obj("seccomp")
    return Linux(
        namespaces=tuple(namespaces),
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
        time_offsets=tuple(offsets),
        devices=tuple(devices),
        cgroups_path=cgroups_path,
        resources=_resources(resources) if resources else None,
        rootfs_propagation=propagation,
        masked_paths=tuple(_absolute(r, "maskedPaths", p) for p in r.strs("maskedPaths")),
        readonly_paths=tuple(_absolute(r, "readonlyPaths", p) for p in r.strs("readonlyPaths")),
        sysctl=r.str_map("sysctl"),
        seccomp=_seccomp(seccomp) if seccomp else None,
        mount_label=r.str("mountLabel"),
    )


def _resources(r: _Reader) -> Resources:
    rules = []
    for d in r.objs("devices"):
        kind = d.str("type", "a") or "a"
        if kind not in ("a", "c", "b"):
            d.fail("type", f"unknown device type {kind!r} (a, c or b)")
        access = d.str("access", "rwm") or "rwm"
        if not set(access) <= set("rwm"):
            d.fail("access", f"must be made of r, w and m, got {access!r}")
        rules.append(
            DeviceRule(d.bool("allow"), kind, d.int("major", -1, MAJOR_MAX), d.int("minor", -1, MINOR_MAX), access)
        )
    memory = cpu = block_io = None
    m = r.obj("memory")
    if m:
        memory = Memory(
            limit=m.int("limit", -1, _I64),
            reservation=m.int("reservation", -1, _I64),
            swap=m.int("swap", -1, _I64),
            kernel=m.int("kernel", -1, _I64),
            kernel_tcp=m.int("kernelTCP", -1, _I64),
            swappiness=m.int("swappiness", 0, _U64),
            disable_oom_killer=m.opt_bool("disableOOMKiller"),
            use_hierarchy=m.opt_bool("useHierarchy"),
        )
        if memory.swappiness is not None and memory.swappiness > 100:
            m.fail("swappiness", f"must be between 0 and 100, got {memory.swappiness}")
        if memory.limit not in (None, -1) and memory.swap not in (None, -1) and memory.swap < memory.limit:
            m.fail("swap", f"memory+swap limit {memory.swap} is lower than the memory limit {memory.limit}")
    c = r.obj("cpu")
    if c:
        cpu = CPU(
            shares=c.int("shares", 0, _U64),
            quota=c.int("quota", -1, _I64),
            burst=c.int("burst", 0, _U64),
            period=c.int("period", 0, _U64),
            realtime_runtime=c.int("realtimeRuntime", -1, _I64),
            realtime_period=c.int("realtimePeriod", 0, _U64),
            cpus=c.str("cpus"),
            mems=c.str("mems"),
            idle=c.int("idle", 0, 1),
        )
        for key, value in (("cpus", cpu.cpus), ("mems", cpu.mems)):
            if value and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", value):
                c.fail(key, f"expected a list like 0-2,4, got {value!r}")
    p = r.obj("pids")
    pids_limit = p.int("limit", -1, _I64, required=True) if p else None
    b = r.obj("blockIO")
    if b:
        block_io = BlockIO(
            weight=b.int("weight", 10, 1000),
            leaf_weight=b.int("leafWeight", 10, 1000),
            weight_device=tuple(
                WeightDevice(
                    w.int("major", 0, MAJOR_MAX, True),
                    w.int("minor", 0, MINOR_MAX, True),
                    w.int("weight", 10, 1000),
                    w.int("leafWeight", 10, 1000),
                )
                for w in b.objs("weightDevice")
            ),
            **{
                name: tuple(
                    ThrottleDevice(
                        t.int("major", 0, MAJOR_MAX, True),
                        t.int("minor", 0, MINOR_MAX, True),
                        t.int("rate", 0, _U64, True),
                    )
                    for t in b.objs(key)
                )
                for name, key in (
                    ("throttle_read_bps_device", "throttleReadBpsDevice"),
                    ("throttle_write_bps_device", "throttleWriteBpsDevice"),
                    ("throttle_read_iops_device", "throttleReadIOPSDevice"),
                    ("throttle_write_iops_device", "throttleWriteIOPSDevice"),
                )
            },
        )
    hugepages = []
    for h in r.objs("hugepageLimits"):
        size = h.str("pageSize", required=True)
        if not re.fullmatch(r"[1-9][0-9]*[KMGT]B", size):
            h.fail("pageSize", f"expected a size like 2MB or 1GB, got {size!r}")
        hugepages.append(HugepageLimit(size, h.int("limit", 0, _U64, True) or 0))
    unified = r.str_map("unified")
    for key, _ in unified:
        if not re.fullmatch(r"[A-Za-z0-9_]+\.[A-Za-z0-9_.]+", key):
            r.fail("unified", f"{key!r} is not a cgroup v2 file name (like memory.high)")
    return Resources(
        devices=tuple(rules),
        memory=memory,
        cpu=cpu,
        pids_limit=pids_limit,
        block_io=block_io,
        hugepage_limits=tuple(hugepages),
        unified=unified,
    )


def _seccomp(r: _Reader) -> Seccomp:
    default = r.str("defaultAction", required=True)
    if default not in SECCOMP_ACTIONS:
        r.fail("defaultAction", f"unknown action {default!r}")
    flags = r.strs("flags")
    for i, flag in enumerate(flags):
        if flag not in SECCOMP_FLAGS:
            raise ConfigError(f"{r.at('flags')}[{i}]", f"unknown seccomp flag {flag!r}", source=r.source)
    rules = []
    for s in r.objs("syscalls"):
        names = s.strs("names")
        if not names:
            s.fail("names", "must name at least one syscall")
        action = s.str("action", required=True)
        if action not in SECCOMP_ACTIONS:
            s.fail("action", f"unknown action {action!r}")
        args = []
        for a in s.objs("args"):
            op = a.str("op", required=True)
            if op not in SECCOMP_OPS:
                a.fail("op", f"unknown operator {op!r}")
            args.append(
                SeccompArg(
                    a.int("index", 0, 5, True),
                    a.int("value", 0, _U64, True),
                    op,
                    a.int("valueTwo", 0, _U64) or 0,
                )
            )
        rules.append(SeccompRule(names, action, s.int("errnoRet", 0, _U32), tuple(args)))
    return Seccomp(
        default_action=default,
        default_errno_ret=r.int("defaultErrnoRet", 0, _U32),
        architectures=r.strs("architectures"),
        flags=flags,
        syscalls=tuple(rules),
        listener_path=r.str("listenerPath"),
        listener_metadata=r.str("listenerMetadata"),
    )
