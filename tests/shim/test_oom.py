"""The OOM watcher's v2 path: inotify on memory.events, publishing when oom_kill grows.

This hybrid host has no cgroup2 memory controller, so the file here is a stand-in with memory.events'
format on tmpfs, read by a real V2Manager (real inotify, real event loop); the real cgroup v2 test runs in
the v2 guest.
The v1 path is tested end to end against containerd (integration/test_shim.py).
"""

import asyncio

from pyoci.runtime.cgroups.base import oom_kills
from pyoci.runtime.cgroups.v2 import V2Manager
from pyoci.shim.oom import OOMWatcher


def test_counter_parsing(tmp_path):
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert oom_kills(str(v1)) == 3 and oom_kills(str(v2)) == 1
    assert oom_kills(str(tmp_path / "missing")) == 0


async def test_v2_publishes_once_per_kill_and_only_for_oom_kill(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
    published = []
    watcher = OOMWatcher(published.append)
    watcher.add("c1", V2Manager(str(tmp_path), mount=str(tmp_path)))
    try:
        events.write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 0\noom_group_kill 0\n")  # oom but no kill
        await asyncio.sleep(0.1)
        assert published == []
        events.write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n")
        await asyncio.sleep(0.1)
        assert published == ["c1"]
        assert watcher.check("c1") is False  # already published: no duplicate
        events.write_text("low 0\nhigh 0\nmax 6\noom 2\noom_kill 2\noom_group_kill 0\n")
        assert watcher.check("c1") is True and published == ["c1", "c1"]
    finally:
        watcher.close()
