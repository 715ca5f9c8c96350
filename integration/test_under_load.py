"""Races that hide on an idle machine, run with every core busy (the ``busy_cpus`` fixture).

- The fork protocol: 500 creates and deletes, not one failure (a message of B overtaking A's pid once
  failed 1-3 % of creates).
- Hooks as runtime-spec 1.1 says, 50 rounds: poststart runs after the user process has started (the
  process it sees is busybox, not the runtime), and a failing poststart or poststop hook is a warning
  while the hooks after it still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

STRESS = textwrap.dedent(
    """
    import os, sys, traceback
    from pyoci.runtime import kernel
    from pyoci.runtime.container import Container
    from pyoci.runtime.state import Store
    kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1)
    bundle, root, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store, failures = Store(root), []
    for i in range(count):
        cid = f"stress-{i}"
        try:
            Container.create(store, cid, bundle).delete(force=True)
        except Exception as exc:
            failures.append(f"{cid}: {exc}")
            try:
                Container.load(store, cid).delete(force=True)
            except Exception:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
    print(len(failures))
    print("\\n".join(failures[:5]))
    """
)


def test_five_hundred_creates_under_load_never_fail(bundle, busy_cpus):
    bundle.config["process"]["args"] = ["true"]
    bundle.write()
    result = subprocess.run(
        [sys.executable, "-c", STRESS, str(bundle.path), str(bundle.root), "500"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    failures, *detail = result.stdout.splitlines()
    assert failures == "0", f"{failures} of 500 creates failed under load, e.g.:\n" + "\n".join(detail)
    assert not list(bundle.root.glob("stress-*"))


def _hook(script: str) -> dict:
    return {"path": "/bin/sh", "args": ["sh", "-c", script]}


def test_poststart_sees_the_started_process_and_failing_hooks_do_not_stop_the_rest(bundle, busy_cpus, tmp_path):
    seen, after_poststart, after_poststop = tmp_path / "seen", tmp_path / "poststart-2", tmp_path / "poststop-2"
    # what the container's pid runs at poststart; then the hook ends it (so each round is short)
    exe_of_pid = (
        r"""pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p'); """
        r"""readlink /proc/$pid/exe 2>&1 || echo "unreadable $pid $(cat /proc/$pid/stat)"; """
        r"""[ "${pid:-0}" -gt 1 ] && kill -9 $pid"""
    )
    exe_of_pid = "{ " + exe_of_pid + "; }"
    bundle.config["hooks"] = {
        # in the container, between start and execve: poststart must wait for it
        "startContainer": [{"path": "/bin/sleep", "args": ["sleep", "0.2"]}],
        "poststart": [_hook("exit 3"), _hook(f"{exe_of_pid} >> {seen}; echo ok >> {after_poststart}")],
        "poststop": [_hook("exit 4"), _hook(f"echo ok >> {after_poststop}")],
    }
    bundle.config["process"]["args"] = ["sleep", "60"]
    bundle.write()
    rounds = 50
    for i in range(rounds):
        result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
        assert result.returncode == 128 + 9, f"round {i}: {result.stderr}"  # the hook's SIGKILL
        assert "poststart hook" in result.stderr and "poststop hook" in result.stderr, result.stderr
    exes = seen.read_text().splitlines()
    assert len(exes) == rounds
    assert all(exe.endswith("/busybox") for exe in exes), f"poststart ran before the user process started: {exes}"
    assert after_poststart.read_text().count("ok") == rounds
    assert after_poststop.read_text().count("ok") == rounds


def test_sysctls_are_written_before_proc_sys_is_read_only(bundle):
    """A pod sandbox has /proc/sys read-only; its sysctls must still be set (runc's order)."""
    bundle.config["linux"]["sysctl"] = {"net.ipv4.ip_unprivileged_port_start": "81", "kernel.shm_rmid_forced": "1"}
    bundle.config["linux"]["readonlyPaths"] = [*bundle.config["linux"].get("readonlyPaths", []), "/proc/sys"]
    bundle.config["process"]["args"] = [
        "sh", "-c", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced",
    ]  # fmt: skip
    bundle.write()
    result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["81", "1"]
    assert json.loads(json.dumps(bundle.config))  # the config stayed valid JSON
