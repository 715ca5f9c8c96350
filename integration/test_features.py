"""``pyoci features`` says exactly what works: every mount option, seccomp action and flag, and namespace it
lists is used in a real container here, and where its effect shows in /proc it is checked there."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from integration.harness.bundle import PYOCI

# where a mount option shows in its /proc/self/mountinfo line: (field, text); field 0 is the per-mount options,
# 1 the superblock's, "root" the mount's root, "tag" the optional fields (propagation)
SHOWS = {
    "ro": (0, "ro"),
    "remount": (0, "ro"),  # remounts the mount made just before it read-only
    "nosuid": (0, "nosuid"),
    "nodev": (0, "nodev"),
    "noexec": (0, "noexec"),
    "noatime": (0, "noatime"),
    "nodiratime": (0, "nodiratime"),
    "nosymfollow": (0, "nosymfollow"),
    "dirsync": (1, "dirsync"),
    "sync": (1, "sync"),
    "lazytime": (1, "lazytime"),
    "mand": (1, "mand"),
    "shared": ("tag", "shared:"),
    "rshared": ("tag", "shared:"),
    "unbindable": ("tag", "unbindable"),
    "runbindable": ("tag", "unbindable"),
    "idmap": (0, "idmapped"),
    "ridmap": (0, "idmapped"),
    "bind": ("root", "/src"),
    "rbind": ("root", "/src"),
}
# options whose effect is the default: their opposite must not show (not norelatime: the kernel makes every
# mount relatime unless strictatime or noatime is given, for runc too)
CLEARS = {"rw": "ro", "suid": "nosuid", "dev": "nodev", "exec": "noexec", "atime": "noatime", "diratime": "nodiratime",
          "symfollow": "nosymfollow", "async": "sync", "nomand": "mand",
          "nolazytime": "lazytime"}  # fmt: skip


@pytest.fixture(scope="module")
def features() -> dict:
    return json.loads(subprocess.run([PYOCI, "features"], capture_output=True, text=True, check=True).stdout)


def run(bundle, args: list[str]) -> subprocess.CompletedProcess:
    bundle.config["process"]["args"] = args
    bundle.write()
    return bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)


def _mount(option: str, source: str) -> list[dict]:
    dest = f"/o/{option}"
    if option in ("bind", "rbind"):
        return [{"destination": dest, "type": "bind", "source": source, "options": [option]}]
    if option in ("idmap", "ridmap"):
        ids = [{"containerID": 0, "hostID": 0, "size": 1}]
        return [{"destination": dest, "type": "bind", "source": source, "options": ["rbind", option],
                 "uidMappings": ids, "gidMappings": ids}]  # fmt: skip
    if option == "remount":
        return [{"destination": dest, "type": "tmpfs", "source": "tmpfs"},
                {"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": ["remount", "ro"]}]  # fmt: skip
    return [{"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": [option]}]


def _fields(line: str) -> dict:
    left, _, right = line.partition(" - ")
    words, super_words = left.split(), right.split()
    return {0: words[5].split(","), 1: super_words[2].split(","), "root": words[3], "tag": " ".join(words[6:])}


def test_every_listed_mount_option_works_and_shows(bundle, features):
    options = features["mountOptions"]
    assert set(SHOWS) | set(CLEARS) <= set(options), "a checked option is no longer listed"
    src = bundle.path / "src"
    src.mkdir()
    os.chmod(src, 0o755)
    bundle.config["mounts"] += [m for option in options for m in _mount(option, str(src))]
    result = run(bundle, ["cat", "/proc/self/mountinfo"])
    assert result.returncode == 0, result.stderr
    lines = {line.split()[4]: _fields(line) for line in result.stdout.splitlines()}
    missing = [o for o in options if f"/o/{o}" not in lines]
    assert not missing, f"listed options whose mount is not there: {missing}"
    wrong = []
    for option in options:
        got = lines[f"/o/{option}"]
        if option in SHOWS:
            where, text = SHOWS[option]
            value = got[where]
            ok = (
                text in value
                if isinstance(value, list)
                else (text in value if where == "tag" else value.endswith(text))
            )
            if not ok:
                wrong.append(f"{option}: {text!r} not in {value!r}")
        elif option in CLEARS and CLEARS[option] in got[0] + got[1]:
            wrong.append(f"{option}: {CLEARS[option]!r} is set: {got}")
    assert not wrong, wrong


def test_an_option_that_is_not_listed_is_refused_with_its_name(bundle, features):
    assert "nonsense" not in features["mountOptions"]
    bundle.config["mounts"].append({"destination": "/o", "type": "tmpfs", "source": "tmpfs", "options": ["nonsense"]})
    result = run(bundle, ["true"])  # passed to the filesystem as data, as runc does: the kernel refuses it
    assert result.returncode == 1 and "on /o" in result.stderr and "'nonsense'" in result.stderr


def test_every_listed_seccomp_action_and_flag_is_accepted(bundle, features):
    seccomp = features["linux"]["seccomp"]
    assert seccomp["enabled"]
    # one rule per action, each on a syscall busybox's `true` does not make
    unused = ["acct", "add_key", "bpf", "delete_module", "fanotify_init", "init_module", "kexec_load", "pivot_root",
              "quotactl", "swapon", "syslog", "uselib"]  # fmt: skip
    actions = [a for a in seccomp["actions"] if a not in ("SCMP_ACT_ALLOW", "SCMP_ACT_NOTIFY")]
    assert len(actions) <= len(unused)
    rules = [{"names": [name], "action": action} for name, action in zip(unused, actions, strict=False)]
    flags = [f for f in seccomp["supportedFlags"] if f != "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]  # notify only
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules, "flags": flags}
    result = run(bundle, ["true"])
    assert result.returncode == 0, result.stderr
    # SCMP_ACT_NOTIFY is known: refused only for want of an agent (integration/test_seccomp_notify.py runs one)
    assert "SCMP_ACT_NOTIFY" in seccomp["actions"]
    rules.append({"names": ["mknod"], "action": "SCMP_ACT_NOTIFY"})
    result = run(bundle, ["true"])
    assert result.returncode == 1 and "listenerPath" in result.stderr


def test_every_listed_namespace_can_be_made(bundle, features):
    kinds = features["linux"]["namespaces"]
    c = bundle.config
    c["linux"]["namespaces"] = [{"type": kind} for kind in kinds]
    c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    c["mounts"] = [m for m in c["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    proc_names = {"network": "net", "mount": "mnt"}
    names = [proc_names.get(kind, kind) for kind in kinds]
    result = run(bundle, ["sh", "-c", " ".join(f"readlink /proc/self/ns/{n};" for n in names)])
    assert result.returncode == 0, result.stderr
    inside = result.stdout.split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in names]
    same = [n for n, a, b in zip(names, inside, host, strict=True) if a == b]
    assert not same, f"listed namespaces the container shares with the host: {same}"


def test_the_cgroup_drivers_listed_are_the_ones_the_code_has(features):
    cgroup = features["linux"]["cgroup"]
    assert cgroup["v1"] and cgroup["v2"]
    from pyoci.runtime.cgroups import systemd  # noqa: F401  (listed because the driver exists)

    assert cgroup["systemd"] and not cgroup["systemdUser"] and not cgroup["rdma"]
