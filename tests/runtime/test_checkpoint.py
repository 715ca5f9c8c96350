"""Checkpoint/restore's checks that need no criu run: refusals, external mounts, and criu errors naming the log."""

from __future__ import annotations

import json
import os

import pytest

from pyoci.runtime.cgroups import CgroupError
from pyoci.runtime.checkpoint import (
    CheckpointOptions,
    CriuError,
    RestoreOptions,
    _bind_mounts,
    checkpoint,
    restore,
)
from pyoci.runtime.container import Container, CreateOptions
from pyoci.runtime.errors import ConfigError, InvalidState, Unsupported
from pyoci.runtime.features import default_spec
from pyoci.runtime.spec import spec_from_bytes
from pyoci.runtime.state import State, Store, process_start_time


def _config(**process) -> dict:
    config = default_spec()
    config["process"].update(process)
    config["mounts"].append({"destination": "/data/", "type": "bind", "source": "/srv/data", "options": ["rbind"]})
    config["mounts"].append({"destination": "/etc/hosts", "type": "none", "source": "/etc/hosts", "options": ["bind"]})
    return config


def _container(tmp_path, pid: int, **process) -> Container:
    store = Store(tmp_path / "state")
    store.create("c1")
    (store.dir("c1") / "config.json").write_text(json.dumps(_config(**process)))
    state = State(id="c1", bundle=str(tmp_path), rootfs=str(tmp_path), pid=pid, pid_start=process_start_time(pid))
    state.started = True
    store.save(state)
    return Container.load(store, "c1")


def test_bind_mounts_are_the_external_mounts():
    spec = spec_from_bytes(json.dumps(_config()).encode())
    assert _bind_mounts(spec) == [("/data", "/srv/data"), ("/etc/hosts", "/etc/hosts")]


def test_terminal_container_is_refused(tmp_path):
    container = _container(tmp_path, os.getpid(), terminal=True)
    with pytest.raises(Unsupported, match="terminal"):
        checkpoint(container, CheckpointOptions(image_path=str(tmp_path / "images")))
    assert not (tmp_path / "images").exists()


def test_stopped_container_is_refused(tmp_path):
    container = _container(tmp_path, 0)
    with pytest.raises(InvalidState, match="not running"):
        checkpoint(container, CheckpointOptions(image_path=str(tmp_path / "images")))


def test_restore_without_images_is_refused_and_leaves_nothing(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(_config(terminal=False)))
    store = Store(tmp_path / "state")
    with pytest.raises(ConfigError, match="no criu checkpoint"):
        restore(store, "c1", str(bundle), RestoreOptions(image_path=str(tmp_path / "empty")))
    assert not store.exists("c1")


def test_restore_of_a_terminal_config_is_refused(tmp_path):
    bundle, images = tmp_path / "bundle", tmp_path / "images"
    (bundle / "rootfs").mkdir(parents=True)
    images.mkdir()
    (images / "inventory.img").write_bytes(b"")
    (bundle / "config.json").write_text(json.dumps(_config(terminal=True)))
    store = Store(tmp_path / "state")
    with pytest.raises(Unsupported, match="terminal"):
        restore(store, "c1", str(bundle), RestoreOptions(image_path=str(images)))
    assert not store.exists("c1")


def _restorable_bundle(tmp_path, config: dict):
    bundle, images = tmp_path / "bundle", tmp_path / "images"
    (bundle / "rootfs").mkdir(parents=True)
    images.mkdir()
    (images / "inventory.img").write_bytes(b"")
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle, images


def test_restore_checks_the_config_as_create_does(tmp_path):
    """One constructor for both: restore refuses what create refuses, in create's words, and leaves nothing."""
    config = _config(terminal=False)
    del config["process"]
    bundle, images = _restorable_bundle(tmp_path, config)
    store = Store(tmp_path / "state")
    with pytest.raises(ConfigError, match="process: required to restore a container"):
        restore(store, "c1", str(bundle), RestoreOptions(image_path=str(images)))
    with pytest.raises(ConfigError, match="process: required to create a container"):
        Container.create(store, "c1", str(bundle))
    assert not store.exists("c1")


def test_restore_expands_a_systemd_cgroups_path_as_create_does(tmp_path):
    """--systemd-cgroup: restore records cgroupsPath as "slice:prefix:name" as create does (it used to skip that)."""
    config = _config(terminal=False)
    config["linux"]["cgroupsPath"] = "/not/a/systemd/path"
    bundle, images = _restorable_bundle(tmp_path, config)
    store = Store(tmp_path / "state")
    systemd = CreateOptions(systemd_cgroup=True)
    with pytest.raises(CgroupError, match="slice:prefix:name") as created:
        Container.create(store, "c1", str(bundle), systemd)
    with pytest.raises(CgroupError, match="slice:prefix:name") as restored:
        restore(store, "c1", str(bundle), RestoreOptions(image_path=str(images), create=systemd))
    assert str(restored.value) == str(created.value)
    assert not store.exists("c1")


def test_criu_error_names_the_log_and_its_last_errors(tmp_path):
    log = tmp_path / "dump.log"
    lines = [f"(00.{i:06d}) note {i}" for i in range(50)]
    lines[40] = "(00.000040) Error (criu/mount.c:1023): mnt: Mount 42 ./data (master_id: 0 shared_id: 0) is external"
    log.write_text("\n".join(lines) + "\n")
    message = str(CriuError("dump", log, 1))
    assert f"log {log}" in message and "exit status 1" in message
    assert "Mount 42 ./data" in message and "note 49" not in message


def test_criu_error_without_error_lines_quotes_the_tail(tmp_path):
    log = tmp_path / "restore.log"
    log.write_text("a\nb\nlast words\n")
    assert "last words" in str(CriuError("restore", log, 1))
    assert "cannot read it" in str(CriuError("restore", tmp_path / "missing.log", 1))
