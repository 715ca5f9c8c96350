"""Idmapped mounts (spec 1.1 mount uidMappings/gidMappings, options idmap/ridmap) through the ``pyoci`` CLI and
through containerd: what a container sees of a host directory, where its files land on the host, recursion, and
clear failures that leave nothing behind.

A mapping line reads as in ``uid_map``: ``containerID`` is the id on the source filesystem, ``hostID`` the (host)
id it is seen as through the mount. So a host directory owned by 1000 appears as root in a container without a
user namespace with ``1000 -> 0``, and in one whose user namespace maps 0 -> 100000 with ``1000 -> 100000``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.harness.bundle import make_bundle
from pyoci.runtime import idmap, procfs, spec

PYOCI = "io.containerd.pyoci.v2"
USERNS_MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host directory owned by 1000:1000 with a file owned by root in it (removed afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="pyoci-idmap-", dir="/tmp"))
    os.chmod(base, 0o755)
    data = base / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    (data / "root-file").write_text("x")
    yield data
    shutil.rmtree(base, ignore_errors=True)


def _one(container_id: int, host_id: int, size: int = 1) -> list[dict]:
    return [{"containerID": container_id, "hostID": host_id, "size": size}]


def _mount(source: Path, options: list[str], uid_maps: list[dict] | None = None, dest: str = "/data") -> dict:
    m = {"destination": dest, "type": "bind", "source": str(source), "options": options}
    if uid_maps is not None:
        m["uidMappings"] = uid_maps
        m["gidMappings"] = uid_maps
    return m


def _user_namespace(config: dict, rootfs: Path) -> None:
    """A user namespace mapping 0 -> 100000; /data made in the rootfs beforehand (the host's root owns the rootfs,
    so the container's root could not make it)."""
    (rootfs / "data").mkdir(exist_ok=True)
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = USERNS_MAP
    config["linux"]["gidMappings"] = USERNS_MAP
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys/fs/cgroup"]


def run(bundle, script: str) -> subprocess.CompletedProcess:
    bundle.config["process"]["args"] = ["sh", "-c", script]
    bundle.write()
    return bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)


SEE = (
    "stat -c '%u:%g' /data /data/root-file; touch /data/new && echo made; "
    "grep -c ' /data .*idmapped' /proc/self/mountinfo"
)


def test_user_namespaced_container_sees_host_1000_as_root_and_writes_as_1000(bundle, host_dir):
    _user_namespace(bundle.config, bundle.path / "rootfs")
    bundle.config["mounts"].append(_mount(host_dir, ["bind", "idmap"], _one(1000, 100000)))
    result = run(bundle, SEE)
    assert result.returncode == 0, result.stderr
    # /data (1000 on disk) is root inside; root's file has no mapping through the mount: nobody
    assert result.stdout.split() == ["0:0", "65534:65534", "made", "1"]
    st = os.stat(host_dir / "new")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_container_without_user_namespace(bundle, host_dir):
    """The mapping applies to the mount only: the container's root is the host's root."""
    bundle.config["mounts"].append(_mount(host_dir, ["bind", "idmap"], _one(1000, 0)))
    result = run(bundle, SEE + "; stat -c %u /bin/busybox")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0:0", "65534:65534", "made", "1", "0"]
    st = os.stat(host_dir / "new")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_uid_mappings_without_the_option_are_idmapped(bundle, host_dir):
    """runc 1.2: mount mappings with neither idmap nor ridmap are an (non-recursive) idmapped mount, never ignored."""
    bundle.config["mounts"].append(_mount(host_dir, ["bind"], _one(1000, 0)))
    result = run(bundle, "stat -c %u /data")
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr


def test_idmap_without_mappings_uses_the_container_user_namespace(bundle, host_dir):
    """The Kubernetes case: files root owns on the host are the user-namespaced container root's."""
    _user_namespace(bundle.config, bundle.path / "rootfs")
    host_dir.chmod(0o777)  # the container's root is not the owner of /data (1000): no capability lets it write
    bundle.config["mounts"].append(_mount(host_dir, ["rbind", "idmap"]))
    result = run(bundle, SEE)
    assert result.returncode == 0, result.stderr
    # 1000 on disk -> 101000 through the mount -> 1000 in the container; root's file -> container root
    assert result.stdout.split() == ["1000:1000", "0:0", "made", "1"]
    st = os.stat(host_dir / "new")
    assert (st.st_uid, st.st_gid) == (0, 0)


@contextlib.contextmanager
def _user_namespace_holder() -> Iterator[int]:
    """A process in a user namespace of its own mapping 0 -> 100000 (65536); ended by its pid afterwards."""
    holder = subprocess.Popen(["unshare", "--user", "sleep", "1000"])
    try:
        ours = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/user") == ours:
            assert time.monotonic() < deadline, "unshare --user never entered its namespace"
            time.sleep(0.01)
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{holder.pid}/{name}").write_text("0 100000 65536\n")
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_idmap_without_mappings_in_a_joined_user_namespace_uses_its_mapping(host_dir):
    """In-process (pyoci's CLI joins a user namespace as the host's root, unmapped there, so most of a default
    config's mounts fail before this one): the tree is idmapped with the joined namespace's mapping."""
    with _user_namespace_holder() as pid:
        config = {
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "mounts": [_mount(host_dir, ["bind", "idmap"])],
            "linux": {"namespaces": [{"type": "mount"}, {"type": "user", "path": f"/proc/{pid}/ns/user"}]},
        }
        trees = idmap.detached_trees(spec.parse_spec(config))
    try:
        # seen from the host through the mount: 1000 on disk -> 101000, root's file -> 100000
        assert os.fstat(trees[0]).st_uid == 101000
        assert os.stat("root-file", dir_fd=trees[0]).st_uid == 100000
    finally:
        os.close(trees[0])


@contextlib.contextmanager
def _submount(host_dir: Path) -> Iterator[Path]:
    """``host_dir/sub``: a bind mount (on the host) of another directory owned by 1000; unmounted afterwards."""
    other = host_dir.parent / "other"
    other.mkdir()
    os.chown(other, 1000, 1000)
    sub = host_dir / "sub"
    sub.mkdir()
    subprocess.run(["mount", "--bind", "--make-private", str(other), str(sub)], check=True)
    try:
        yield sub
    finally:
        subprocess.run(["umount", str(sub)], check=True)


@pytest.mark.parametrize("option, sub_owner", [("ridmap", "0"), ("idmap", "1000")])
def test_ridmap_maps_submounts_and_idmap_only_the_top(bundle, host_dir, option, sub_owner):
    with _submount(host_dir):
        bundle.config["mounts"].append(_mount(host_dir, ["rbind", option], _one(1000, 0)))
        result = run(bundle, "stat -c %u /data /data/sub; grep -c ' /data[ /].*idmapped' /proc/self/mountinfo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", sub_owner, "2" if option == "ridmap" else "1"]


def test_idmapped_mount_keeps_its_other_options(bundle, host_dir):
    bundle.config["mounts"].append(_mount(host_dir, ["bind", "idmap", "ro", "nosuid"], _one(1000, 0)))
    result = run(
        bundle, "stat -c %u /data; touch /data/x 2>/dev/null || echo refused; grep ' /data ' /proc/self/mountinfo"
    )
    assert result.returncode == 0, result.stderr
    owner, refused, line = result.stdout.splitlines()
    assert (owner, refused) == ("0", "refused")
    assert "ro,nosuid" in line.split()[5] and "idmapped" in line.split()[5]


def test_mounts_made_in_the_container_do_not_propagate_to_the_host(bundle, host_dir):
    """The source is a shared mount: its idmapped copy is a slave of it (as a plain bind in the container's rslave
    mount namespace is), so a mount the container makes under it never shows on the host."""
    subprocess.run(["mount", "--bind", str(host_dir), str(host_dir)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(host_dir)], check=True)
        (host_dir / "sub").mkdir()
        caps = ["CAP_SYS_ADMIN"]
        bundle.config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
        bundle.config["mounts"].append(_mount(host_dir, ["bind", "idmap"], _one(1000, 0)))
        result = run(bundle, "mount -t tmpfs inner /data/sub && grep -c ' /data/sub ' /proc/self/mountinfo")
        assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
        assert f"{host_dir}/sub" not in procfs.mount_points()
    finally:
        subprocess.run(["umount", "-R", str(host_dir)], check=True)


def _no_processes_of(container_id: str) -> list[str]:
    """Processes whose command line names the container (a runtime or a helper it forked), zombies included."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if container_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


@pytest.mark.parametrize(
    "source, maps, expected",
    [
        # sysfs cannot be idmapped (no FS_ALLOW_IDMAP): mount_setattr says EINVAL
        ("/sys/kernel", _one(1000, 0), ["idmapped mount on /data: mount_setattr", "'/sys/kernel' on sysfs", "EINVAL"]),
        # overlapping ranges: the kernel refuses the map itself
        (None, _one(0, 1000, 10) + _one(5, 2000, 10), ["idmapped mount on /data: write uid_map", "EINVAL"]),
    ],
    ids=["sysfs", "overlapping-map"],
)
def test_what_cannot_be_idmapped_fails_clearly_and_leaves_nothing(bundle, host_dir, source, maps, expected):
    before = set(os.listdir("/proc"))
    bundle.config["mounts"].append(_mount(Path(source) if source else host_dir, ["bind", "idmap"], maps))
    result = run(bundle, "true")
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    for part in expected:
        assert part in line, result.stderr
    assert not _no_processes_of(bundle.id)
    assert not (bundle.root / bundle.id).exists()
    assert not [p for p in set(os.listdir("/proc")) - before if p.isdigit() and _is_zombie_child(p)]
    # the bundle fixture checks afterwards: no state dir, cgroup or mount


def _is_zombie_child(pid: str) -> bool:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] == "Z" and int(fields[1]) == os.getpid()
    return False


def test_helper_is_reaped_and_fds_closed_when_the_map_is_refused(host_dir):
    """In-process: a refused map raises naming the mount, and leaves no child (reaped by pid) and no fd open."""
    fds, children = _open_fds(), _children()
    config = {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs"},
        "mounts": [_mount(host_dir, ["bind", "idmap"], _one(0, 1000, 10) + _one(5, 2000, 10))],
    }
    with pytest.raises(Exception, match="idmapped mount on /data: write uid_map") as info:
        idmap.detached_trees(spec.parse_spec(config))
    assert info.value.errno == 22
    assert _children() == children  # the helper was reaped (the session's containerd stays a child)
    assert _open_fds() == fds


def test_detached_trees_for_two_mounts_share_one_helper_and_close_everything(host_dir):
    fds, children = _open_fds(), _children()
    config = {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs"},
        "mounts": [
            _mount(host_dir, ["bind", "idmap"], _one(1000, 0)),
            _mount(host_dir, ["rbind", "ridmap"], _one(1000, 0), dest="/other"),
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
        ],
    }
    trees = idmap.detached_trees(spec.parse_spec(config))
    try:
        assert sorted(trees) == [0, 1]
    finally:
        for fd in trees.values():
            os.close(fd)
    assert _children() == children  # the helper was reaped (the session's containerd stays a child)
    assert _open_fds() == fds


def _children() -> set[int]:
    """This process's children, zombies included (every thread's: pytest's fixtures start some)."""
    return {int(pid) for task in os.listdir("/proc/self/task") for pid in _read(f"/proc/self/task/{task}/children")}


def _read(path: str) -> list[str]:
    with open(path) as f:
        return f.read().split()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))  # a count: the listing's own fd may reuse a number


def test_through_containerd(ctr, container_id, host_dir):
    """ctr 1.6 cannot pass mount uidMappings: the spec is given whole with ``ctr run --config``."""
    base = host_dir.parent / "bundle"
    config = make_bundle(base, container_id, ["sh", "-c", SEE]).config
    config["root"]["path"] = str(base / "rootfs")
    config["linux"]["cgroupsPath"] = f"/{ctr.namespace}/{container_id}"
    _user_namespace(config, base / "rootfs")
    config["mounts"].append(_mount(host_dir, ["bind", "idmap"], _one(1000, 100000)))
    spec_file = base / "spec.json"
    spec_file.write_text(json.dumps(config))
    result = ctr("run", "--rm", "--config", str(spec_file), "--runtime", PYOCI, container_id)
    assert result.stdout.split() == ["0:0", "65534:65534", "made", "1"], result.stderr
    assert os.stat(host_dir / "new").st_uid == 1000


def test_through_containerd_a_refused_mount_fails_the_create_clearly(ctr, container_id, host_dir):
    base = host_dir.parent / "bundle"
    config = make_bundle(base, container_id, ["true"]).config
    config["root"]["path"] = str(base / "rootfs")
    config["linux"]["cgroupsPath"] = f"/{ctr.namespace}/{container_id}"
    config["mounts"].append(_mount(Path("/sys/kernel"), ["bind", "idmap"], _one(1000, 0)))
    spec_file = base / "spec.json"
    spec_file.write_text(json.dumps(config))
    result = ctr("run", "--rm", "--config", str(spec_file), "--runtime", PYOCI, container_id, check=False)
    assert result.returncode != 0
    assert "idmapped mount on /data: mount_setattr" in result.stderr and "sysfs" in result.stderr, result.stderr
    assert ctr.task_status(container_id) == ""
    assert not any(Path(m + f"/{ctr.namespace}/{container_id}").exists() for m in _cgroup_roots())


def _cgroup_roots() -> list[str]:
    return [m.mount_point for m in procfs.mounts() if m.fs_type in ("cgroup", "cgroup2")]


def test_features_report_idmap():
    assert idmap.supported()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "pyoci"), "features"], capture_output=True, text=True, check=True
    )
    features = json.loads(out.stdout)
    assert features["linux"]["mountExtensions"] == {"idmap": {"enabled": True}}
    assert {"idmap", "ridmap"} <= set(features["mountOptions"])
