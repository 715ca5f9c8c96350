"""The reaper and the runtime's worker threads never take each other's children's exit statuses.

Run in a child Python (the subreaper flag and the forks stay out of pytest's process): a worker thread forks
A, which forks B and exits 3 (the fork protocol's shape); B is reparented to the subreaper and exits 7. The
reaper, on the main thread, must get B and a main-thread child, never A; the worker gets A's status by pid.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, os, threading, time
from pyoci.runtime import kernel
from pyoci.shim.reaper import Reaper

kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
reaper = Reaper()
seen = {}
reaper_exits = []
def worker():
    a = os.fork()
    if a == 0:
        if os.fork() == 0:
            time.sleep(0.1)
            os._exit(7)
        os._exit(3)
    seen["a"] = a
    time.sleep(0.4)  # A is a zombie all this while: the reaper runs meanwhile and must leave it
    seen["a_status"] = os.waitstatus_to_exitcode(os.waitpid(a, 0)[1])
thread = threading.Thread(target=worker)
thread.start()
main_child = os.fork()
if main_child == 0:
    os._exit(5)
deadline = time.monotonic() + 0.3
while time.monotonic() < deadline:
    reaper.reap()
    time.sleep(0.01)
thread.join()
reaper.reap()
for pid in (main_child, seen["a"]):
    reaper.watch(pid, lambda ended: reaper_exits.append((ended.pid, ended.status)))
print(json.dumps({"a": seen["a"], "a_status": seen["a_status"], "main": main_child,
                  "reaped": reaper_exits, "unclaimed": [[e.pid, e.status] for e in reaper._unclaimed.values()]}))
"""


def test_reaper_takes_orphans_and_main_thread_children_but_not_a_worker_threads():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30, check=True)
    result = json.loads(out.stdout)
    assert result["a_status"] == 3  # the worker waited for its own child
    assert result["reaped"] == [[result["main"], 5]]  # the main thread's child went to the reaper
    assert [s for _, s in result["unclaimed"]] == [7]  # and the orphan B, reparented to the subreaper
    assert result["a"] not in [p for p, _ in result["unclaimed"]]
