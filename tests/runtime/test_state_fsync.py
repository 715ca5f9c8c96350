"""state.json: written atomically everywhere, fsynced only outside /run (volatile state needs no disk flush)."""

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from pyoci.runtime.state import State, Store


@pytest.fixture
def fsyncs(monkeypatch):
    calls: list[int] = []
    real = os.fsync

    def record(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


@pytest.fixture
def run_root():
    root = Path("/run") / f"pyoci-test-state-{uuid.uuid4().hex[:8]}"
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _save(store: Store, cid: str, pid: int) -> dict:
    store.save(State(id=cid, bundle="/b", rootfs="/b/rootfs", pid=pid))
    return json.loads((store.dir(cid) / "state.json").read_text())


def test_no_fsync_under_run_and_the_write_is_atomic(run_root, fsyncs):
    store = Store(run_root)
    store.create("c1")
    assert _save(store, "c1", 1)["pid"] == 1
    assert _save(store, "c1", 2)["pid"] == 2  # replaced whole, through a rename
    assert fsyncs == []
    assert sorted(p.name for p in store.dir("c1").iterdir()) == ["state.json"]  # no temporary file left


def test_var_run_counts_as_run(fsyncs, tmp_path, monkeypatch):
    store = Store("/var/run/pyoci-test-never-created")
    monkeypatch.setattr(store, "dir", lambda cid: tmp_path)  # the decision is made on the root's name
    _save(store, "c1", 1)
    assert fsyncs == []


def test_fsync_elsewhere(tmp_path, fsyncs):
    store = Store(tmp_path / "state")
    store.create("c1")
    assert _save(store, "c1", 7)["pid"] == 7
    assert len(fsyncs) == 1


def test_a_root_named_like_run_is_not_run(tmp_path, fsyncs, monkeypatch):
    store = Store("/runaway/state")
    monkeypatch.setattr(store, "dir", lambda cid: tmp_path)
    _save(store, "c1", 1)
    assert len(fsyncs) == 1
