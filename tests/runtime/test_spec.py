"""config.json validation: good configs parse into typed objects; bad ones name the field at fault."""

import copy
import json
import logging
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyoci.runtime import spec as spec_module
from pyoci.runtime.errors import ConfigError
from pyoci.runtime.features import default_spec
from pyoci.runtime.spec import HOOK_KINDS, load_spec, parse_process, parse_resources, parse_spec


def config(**changes):
    c = default_spec()
    c["process"]["terminal"] = False
    for path, value in changes.items():
        node = c
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return c


def test_default_spec_parses_into_typed_objects():
    spec = parse_spec(config())
    assert spec.process.args == ("sh",)
    assert spec.process.capabilities.bounding == ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    assert spec.process.rlimits[0].type == "RLIMIT_NOFILE"
    assert [ns.type for ns in spec.linux.namespaces] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert spec.linux.resources.devices[0].allow is False
    assert spec.mounts[0].destination == "/proc"


def test_unknown_fields_are_tolerated():
    c = config(futureField={"x": 1}, process__futureKnob=True, linux__resources__memory={"limit": 5, "newThing": 1})
    assert parse_spec(c).linux.resources.memory.limit == 5


@pytest.mark.parametrize("version", ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.0", "1.2.1"])
def test_supported_versions(version):
    assert parse_spec(config(ociVersion=version)).oci_version == version


BAD = [
    (dict(ociVersion="2.0.0"), "ociVersion: unsupported version '2.0.0'"),
    (dict(ociVersion=1), "ociVersion: expected string, got 1"),
    (dict(root=None), "root: required"),
    (dict(root__path=""), "root.path: must not be empty"),
    (dict(process__args=[]), "process.args: must name the program to run"),
    (dict(process__args=["sh", 3]), "process.args[1]: expected string, got 3"),
    (dict(process__cwd="relative"), "process.cwd: must be an absolute path"),
    (dict(process__env=["NOEQUALS"]), "process.env[0]: expected KEY=value"),
    (dict(process__terminal="yes"), 'process.terminal: expected boolean, got "yes"'),
    (dict(process__user={"uid": -1}), "process.user.uid: -1 is out of range"),
    (
        dict(process__capabilities={"bounding": ["CAP_FLY"]}),
        "process.capabilities.bounding[0]: unknown capability",
    ),
    (
        dict(process__rlimits=[{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
        "process.rlimits[0].type: unknown rlimit",
    ),
    (
        dict(process__rlimits=[{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 1}]),
        "process.rlimits[0].soft: soft limit",
    ),
    (dict(process__oomScoreAdj=5000), "process.oomScoreAdj: 5000 is out of range"),
    (
        dict(linux__resources__memory={"limit": "1G"}),
        'linux.resources.memory.limit: expected integer, got "1G"',
    ),
    (
        dict(linux__resources__memory={"swappiness": 101}),
        "linux.resources.memory.swappiness: must be between",
    ),
    (dict(linux__resources__cpu={"cpus": "zero"}), "linux.resources.cpu.cpus: expected a list like 0-2,4"),
    (dict(linux__resources__pids={}), "linux.resources.pids.limit: required"),
    (
        dict(linux__namespaces=[{"type": "pid"}, {"type": "pid"}]),
        "linux.namespaces[1].type: duplicate pid namespace",
    ),
    (
        dict(linux__namespaces=[{"type": "galaxy"}]),
        "linux.namespaces[0].type: unknown namespace type 'galaxy'",
    ),
    (
        dict(linux__namespaces=[{"type": "net", "path": "x"}]),
        "linux.namespaces[0].type: unknown namespace type",
    ),
    (
        dict(linux__uidMappings=[{"containerID": 0, "hostID": 1000, "size": 1}]),
        "linux.uidMappings: id mappings need",
    ),
    (
        dict(linux__devices=[{"type": "q", "path": "/dev/x"}]),
        "linux.devices[0].type: unknown device type 'q'",
    ),
    (
        dict(linux__devices=[{"type": "c", "path": "dev/x", "major": 1, "minor": 1}]),
        "linux.devices[0].path: must be",
    ),
    (dict(linux__seccomp={"defaultAction": "SCMP_ACT_MAYBE"}), "linux.seccomp.defaultAction: unknown action"),
    (
        dict(
            linux__seccomp={
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "X"}],
            }
        ),
        "linux.seccomp.syscalls[0].action: unknown action 'X'",
    ),
    (
        dict(
            linux__seccomp={
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["mkdir"],
                        "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            }
        ),
        "linux.seccomp.syscalls[0].args[0].index: 9 is out of range",
    ),
    (dict(linux__rootfsPropagation="sideways"), "linux.rootfsPropagation: unknown propagation"),
    (dict(mounts=[{"type": "tmpfs"}]), "mounts[0].destination: required"),
    (dict(mounts=[{"destination": "/x", "options": "ro"}]), "mounts[0].options: expected array"),
    (dict(hooks__prestart=[{"path": "hook"}]), "hooks.prestart[0].path: must be an absolute path"),
    (
        dict(hooks__poststop=[{"path": "/bin/true", "timeout": 0}]),
        "hooks.poststop[0].timeout: must be positive",
    ),
    (dict(linux__namespaces=[{"type": "pid"}], hostname="h"), "hostname: setting the hostname needs"),
    (dict(annotations={"a": 1}), "annotations.a: expected string, got 1"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_configs_name_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(config(**changes))
    text = str(err.value)
    assert text.startswith("config.json: ") and message in text
    assert "\n" not in text


def test_top_level_must_be_an_object():
    with pytest.raises(ConfigError, match="expected object, got array"):
        parse_spec([])


def test_process_and_resources_parse_on_their_own():
    process = parse_process({"args": ["ls"], "cwd": "/tmp", "env": ["A=b"]}, source="exec")
    assert process.args == ("ls",) and process.cwd == "/tmp"
    with pytest.raises(ConfigError, match=r"^exec: args: must name"):
        parse_process({"args": []}, source="exec")
    resources = parse_resources({"memory": {"limit": -1}, "pids": {"limit": 10}})
    assert resources.memory.limit == -1 and resources.pids_limit == 10
    with pytest.raises(ConfigError, match=r"^resources: cpu.quota: expected integer"):
        parse_resources({"cpu": {"quota": "1"}})


def test_the_model_is_immutable():
    spec = parse_spec(copy.deepcopy(config()))
    with pytest.raises(AttributeError):
        spec.process.args = ("x",)


# ------------------------------------------------------------------------------- versions and warnings


@pytest.mark.parametrize("version", ["1.3.0", "1.9.2-rc.1"])
def test_a_newer_1x_config_runs_with_a_warning(version, caplog):
    spec = parse_spec(config(ociVersion=version, linux__netDevices={"eth1": {}}))
    assert spec.oci_version == version
    assert spec.warnings[0] == (
        f"config.json: ociVersion: {version} is newer than the 1.2 pyoci implements; settings added since are ignored"
    )
    with caplog.at_level(logging.WARNING, logger="pyoci.runtime"):
        spec.log_warnings()
    assert [r.getMessage() for r in caplog.records] == list(spec.warnings)
    assert [r.name for r in caplog.records] == ["pyoci.runtime"] * len(spec.warnings)


@pytest.mark.parametrize(
    "version, message",
    [
        ("0.6.0", "ociVersion: unsupported version '0.6.0' (pyoci runs 1.x configs)"),
        ("2.0.0", "ociVersion: unsupported version '2.0.0' (pyoci runs 1.x configs)"),
        ("1.2", "ociVersion: '1.2' is not a version like 1.2.0"),
        ("latest", "ociVersion: 'latest' is not a version like 1.2.0"),
    ],
)
def test_other_major_versions_are_refused_naming_ociVersion(version, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(config(ociVersion=version))
    assert str(err.value) == f"config.json: {message}"


def test_a_known_config_has_no_warnings():
    assert parse_spec(config()).warnings == ()


def test_unsupported_settings_that_are_present_become_warnings():
    spec = parse_spec(
        config(
            linux__resources__network={"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
            linux__mountLabel="system_u:object_r:svirt_sandbox_file_t:s0:c715,c811",
            process__ioPriority={"class": "IOPRIO_CLASS_IDLE"},
        )
    )
    assert spec.warnings == (
        "config.json: linux.resources.network: net_cls/net_prio cgroups are not supported; ignored",
        "config.json: linux.mountLabel: SELinux mount labels are not supported; ignored",
        "config.json: process.ioPriority: I/O priorities are not supported; ignored",
    )
    # absent, null or empty: no warning
    assert parse_spec(config(linux__mountLabel="", linux__resources__network=None)).warnings == ()


# ------------------------------------------------------------------------------------- hostile input


def write_config(tmp_path, text: str | bytes) -> str:
    (tmp_path / "config.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return str(tmp_path)


@pytest.mark.parametrize(
    "text, field",
    [
        ("[" * 100_000 + "]" * 100_000, "config.json: [0][0][0]"),
        (
            '{"ociVersion": "1.2.0", "annotations": {"a": "[[["}, "x": {"y": [1, ' + "[" * 10**5,
            "config.json: x.y[1][0]",
        ),
    ],
)
def test_a_config_nested_100000_deep_is_one_line_naming_the_field(tmp_path, text, field):
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_spec(write_config(tmp_path, text))
    message = str(err.value)
    assert message.startswith(field) and message.endswith("nested too deeply (over ~1000 levels)")
    assert "\n" not in message and len(message) < 200
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"ociVersion": "1.2.0",', "config.json: invalid JSON: Expecting property name enclosed in double quotes"),
        (b'{"ociVersion": "\xff"}', "config.json: invalid JSON: 'utf-8' codec can't decode byte 0xff"),
        (b'{"x": ' + b"9" * 5000 + b"}", "config.json: invalid JSON: Exceeds the limit (4300 digits)"),
    ],
)
def test_invalid_json_is_a_config_error(tmp_path, raw, message):
    with pytest.raises(ConfigError) as err:
        load_spec(write_config(tmp_path, raw))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_config_larger_than_the_cap_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr(spec_module, "MAX_CONFIG_BYTES", 1024)
    with pytest.raises(ConfigError, match=r"config.json: .*/config.json is larger than 0 MiB"):
        load_spec(write_config(tmp_path, json.dumps(config(annotations={"big": "x" * 2000}))))


def test_a_50_mb_annotation_is_accepted(tmp_path):
    spec = load_spec(write_config(tmp_path, json.dumps(config(annotations={"big": "x" * 50 * 2**20}))))
    assert len(dict(spec.annotations)["big"]) == 50 * 2**20


HOSTILE = [
    (
        dict(linux__devices=[{"type": "c", "path": "/dev/x", "major": 2**40, "minor": 1}]),
        "linux.devices[0].major: 1099511627776 is out of range [0, 4095]",
    ),
    (
        dict(linux__devices=[{"type": "b", "path": "/dev/x", "major": 8, "minor": 2**20}]),
        "linux.devices[0].minor: 1048576 is out of range [0, 1048575]",
    ),
    (
        dict(linux__devices=[{"type": "c", "path": "/dev/x", "major": -1, "minor": 0}]),
        "linux.devices[0].major: -1 is out of range [0, 4095]",
    ),
    (
        dict(linux__resources__devices=[{"allow": True, "type": "c", "major": 2**40}]),
        "linux.resources.devices[0].major: 1099511627776 is out of range [-1, 4095]",
    ),
    (
        dict(linux__resources__devices=[{"allow": True, "type": "c", "major": 1, "minor": -2}]),
        "linux.resources.devices[0].minor: -2 is out of range [-1, 1048575]",
    ),
    (
        dict(linux__resources__blockIO={"throttleReadBpsDevice": [{"major": 2**33, "minor": 0, "rate": 1}]}),
        "linux.resources.blockIO.throttleReadBpsDevice[0].major: 8589934592 is out of range [0, 4095]",
    ),
    (
        dict(process__rlimits=[{"type": "RLIMIT_CORE", "soft": 2**63, "hard": 2**63}]),
        "process.rlimits[0].soft: 9223372036854775808 is out of range [0, 9223372036854775807]",
    ),
    (dict(process__consoleSize={"height": 70000, "width": 80}), "process.consoleSize.height: 70000 is out of range"),
    (dict(process__user={"uid": 2**32 - 1}), "process.user.uid: 4294967295 is out of range [0, 4294967294]"),
    (dict(process__user={"additionalGids": [2**32 - 1]}), "process.user.additionalGids[0]: expected an id in"),
    (dict(process__args=["sh", "-c", "a\x00b"]), "process.args[2]: must not contain a NUL byte"),
    (dict(process__cwd="/a\x00"), "process.cwd: must not contain a NUL byte"),
    (dict(process__env=["A=\ud800"]), "process.env[0]: is not valid Unicode (a lone surrogate escape)"),
    (dict(linux__sysctl={"kernel.x\x00": "1"}), "linux.sysctl.kernel.x\\0: must not contain a NUL byte"),
    (dict(annotations={"a": "\udcff"}), "annotations.a: is not valid Unicode"),
    (
        dict(linux__resources__hugepageLimits=[{"pageSize": "../../../../etc/x", "limit": 1}]),
        "linux.resources.hugepageLimits[0].pageSize: expected a size like 2MB or 1GB, got '../../../../etc/x'",
    ),
    (
        dict(linux__resources__unified={"../../cgroup.procs": "1"}),
        "linux.resources.unified: '../../cgroup.procs' is not a cgroup v2 file name",
    ),
]


@pytest.mark.parametrize("changes, message", HOSTILE, ids=[m.split(":")[0] for _, m in HOSTILE])
def test_hostile_values_are_refused_naming_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(config(**changes))
    assert str(err.value).startswith(f"config.json: {message}") and "\n" not in str(err.value)


def test_values_at_the_kernel_limits_are_accepted():
    spec = parse_spec(
        config(
            linux__devices=[{"type": "c", "path": "/dev/x", "major": 4095, "minor": 2**20 - 1}],
            linux__resources__devices=[{"allow": False, "major": -1, "minor": -1, "access": "rwm"}],
            linux__resources__hugepageLimits=[{"pageSize": "2MB", "limit": 1}],
            linux__resources__unified={"memory.high": "max"},
            process__rlimits=[{"type": "RLIMIT_CORE", "soft": 2**63 - 1, "hard": 2**64 - 1}],
            process__consoleSize={"height": 65535, "width": 65535},
            process__user={"uid": 2**32 - 2, "gid": 0},
        )
    )
    assert (spec.linux.devices[0].major, spec.linux.devices[0].minor) == (4095, 2**20 - 1)
    assert spec.process.rlimits[0].hard == 2**64 - 1


# ---------------------------------------------------------------------------------------------- fuzz

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _rich_config() -> dict:
    """The default config with every part the parser reads filled in, so mutations reach every check."""
    return config(
        hooks={kind: [{"path": "/bin/true", "args": ["true"], "env": ["A=b"], "timeout": 5}] for kind in HOOK_KINDS},
        linux__uidMappings=[{"containerID": 0, "hostID": 1000, "size": 1}],
        linux__gidMappings=[{"containerID": 0, "hostID": 1000, "size": 1}],
        linux__namespaces=[{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user", "time")],
        linux__timeOffsets={"monotonic": {"secs": 1, "nanosecs": 2}},
        linux__devices=[{"type": "c", "path": "/dev/x", "major": 1, "minor": 3, "fileMode": 0o666}],
        linux__resources={
            "devices": [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
            "memory": {"limit": 10**8, "swap": 2 * 10**8, "swappiness": 10},
            "cpu": {"shares": 1024, "quota": 1000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 10},
            "blockIO": {
                "weight": 100,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "unified": {"memory.high": "max"},
            "network": {"classID": 1},
        },
        linux__sysctl={"net.ipv4.ip_forward": "1"},
        linux__seccomp={
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}
            ],
        },
        process__consoleSize={"height": 24, "width": 80},
        process__user={"uid": 1, "gid": 1, "umask": 0o22, "additionalGids": [5]},
        process__oomScoreAdj=10,
    )


def test_the_rich_config_parses():
    assert parse_spec(_rich_config()).linux.resources.block_io.weight == 100


def test_a_key_with_a_newline_is_quoted_in_the_one_line_error():
    """Found by the fuzz test in CI: {"linux": {"timeOffsets": {"\\n": null}}} split the message in two."""
    c = config(linux__namespaces=[{"type": "time"}], linux__timeOffsets={"\n": None})
    with pytest.raises(ConfigError) as err:
        parse_spec(c)
    assert "\n" not in str(err.value) and "linux.timeOffsets.'\\n'" in str(err.value)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_a_mutated_config_raises_only_config_error(data):
    c = _rich_config()
    paths = list(_paths(c))
    path = data.draw(st.sampled_from(paths[1:]))
    node = c
    for key in path[:-1]:
        node = node[key]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(JSON)
    try:
        parse_spec(c)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_fuzz_any_json_document_raises_only_config_error(tmp_path_factory, document):
    bundle = tmp_path_factory.mktemp("fuzz")
    try:
        load_spec(write_config(bundle, json.dumps(document)))
    except ConfigError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_any_bytes_raise_only_config_error(tmp_path_factory, raw):
    bundle = tmp_path_factory.mktemp("fuzz")
    try:
        load_spec(write_config(bundle, b'{"ociVersion": "1.2.0", "root": {"path": "r"}, "x": ' + raw))
    except ConfigError:
        pass


def test_config_bytes_read_once_parse_to_the_same_spec(tmp_path):
    raw = json.dumps(config(hostname="h")).encode()
    write_config(tmp_path, raw)
    assert spec_module.read_config(tmp_path) == raw
    assert spec_module.spec_from_bytes(raw) == load_spec(tmp_path)
    with pytest.raises(ConfigError, match=r"^config.json: .*/nothing/config.json does not exist$"):
        spec_module.read_config(tmp_path / "nothing")
