"""config.json validation: good configs parse into typed objects; bad ones name the field at fault."""

import copy

import pytest

from pyoci.runtime.errors import ConfigError
from pyoci.runtime.features import default_spec
from pyoci.runtime.spec import parse_process, parse_resources, parse_spec


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
