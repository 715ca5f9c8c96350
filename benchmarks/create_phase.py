"""The create phase alone: pyoci's runtime in-process (as the shim runs it) against ``runc create``, interleaved.

    python -m benchmarks.create_phase [--runs 20] [--json out.json]

What the shim's Create RPC costs apart from ttrpc: pyoci's ``Container.create`` called in this process (as
the shim's worker thread calls it: no interpreter start), once with clone3(CLONE_INTO_CGROUP) where the host
has a cgroup2 hierarchy and once with ``PYOCI_NO_CLONE3`` (the init's first process written to cgroup.procs),
against ``runc create`` as containerd's runc shim execs it. Each sample is one create of a busybox bundle
(the init then waits on exec.fifo), followed by an untimed forced delete. The three alternate in rotating
order, so drift hits all alike; medians, min-max and ratios to runc. Run it in the pure cgroup v2 guest:

    python -m integration.vm.guest --timeout 1800 -- .venv/bin/python -m benchmarks.create_phase --runs 10

``--spawn`` times only the step clone3 changes, with less noise: forking A, placing it (cgroup.procs) or
not (clone3), and A forking B, through ``process._fork_container_process`` with a body that exits at once
(no namespaces, no rootfs), clone3 and cgroup.procs interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from integration.harness.bundle import make_bundle
from pyoci.runtime import process as proc
from pyoci.runtime.cgroups import detect_layout, open_cgroup
from pyoci.runtime.container import Container, CreateOptions
from pyoci.runtime.spec import Process
from pyoci.runtime.state import Store

VARIANTS = ("pyoci clone3", "pyoci cgroup.procs", "runc create")


def _pyoci(store: Store, bundle: Path, cid: str, clone3: bool) -> float:
    if clone3:
        os.environ.pop("PYOCI_NO_CLONE3", None)
    else:
        os.environ["PYOCI_NO_CLONE3"] = "1"
    t = time.perf_counter()
    container = Container.create(store, cid, str(bundle), CreateOptions())
    elapsed = time.perf_counter() - t
    container.delete(force=True)
    return elapsed


def _runc(root: Path, bundle: Path, cid: str) -> float:
    # files, not pipes: the container's init inherits runc's stdio and would hold a pipe open until it exits
    with tempfile.TemporaryFile() as err:
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": err}
        t = time.perf_counter()
        code = subprocess.run(["runc", "--root", str(root), "create", "--bundle", str(bundle), cid], **quiet).returncode
        elapsed = time.perf_counter() - t
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"runc create failed: {err.read().decode().strip()}")
        subprocess.run(["runc", "--root", str(root), "delete", "--force", cid], check=True, **quiet)
    return elapsed


def measure(runs: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="pyoci-bench-create-", dir="/tmp"))
    try:
        bundle = make_bundle(base / "bundle", "bench", ["true"])
        config = json.loads((bundle.path / "config.json").read_text())
        config["linux"]["cgroupsPath"] = "/pyoci-bench-create/c"
        (bundle.path / "config.json").write_text(json.dumps(config))
        store, runc_root = Store(base / "pyoci-state"), base / "runc-state"
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}

        def one(variant: str, cid: str) -> float:
            if variant == "runc create":
                return _runc(runc_root, bundle.path, cid)
            return _pyoci(store, bundle.path, cid, clone3=variant == "pyoci clone3")

        for variant in VARIANTS:  # warm: page cache, imports, libseccomp
            one(variant, f"warm-{VARIANTS.index(variant)}")
        for i in range(runs):
            for j in range(len(VARIANTS)):
                variant = VARIANTS[(i + j) % len(VARIANTS)]
                samples[variant].append(one(variant, f"c{i}-{j}"))
    finally:
        os.environ.pop("PYOCI_NO_CLONE3", None)
        layout = detect_layout()
        for mount in {*layout.v1_mounts.values(), layout.unified_mount} - {""}:
            try:
                os.rmdir(f"{mount}/pyoci-bench-create")  # each create's leaf went with its delete
            except FileNotFoundError:
                pass
        shutil.rmtree(base, ignore_errors=True)
    runc = statistics.median(samples["runc create"])
    return {
        "layout": detect_layout().mode,
        "kernel": os.uname().release,
        "runs": runs,
        **{
            v: {
                "median_ms": round(statistics.median(s) * 1000, 1),
                "min_max_ms": [round(min(s) * 1000, 1), round(max(s) * 1000, 1)],
                "ratio_to_runc": round(statistics.median(s) / runc, 2),
            }
            for v, s in samples.items()
        },
    }


def measure_spawn(runs: int) -> dict:
    cgroup = open_cgroup(f"/pyoci-bench-spawn/{os.getpid()}", "unused")
    cgroup.create()
    samples: dict[str, list[float]] = {"clone3": [], "cgroup.procs": []}
    try:
        for i in range(runs):
            for variant in ("clone3", "cgroup.procs") if i % 2 == 0 else ("cgroup.procs", "clone3"):
                if variant == "clone3":
                    os.environ.pop("PYOCI_NO_CLONE3", None)
                else:
                    os.environ["PYOCI_NO_CLONE3"] = "1"
                plan = proc.Plan(process=Process(args=("true",)), into_cgroup=cgroup.clone_target() or "")
                t = time.perf_counter()
                channel, pid = proc._fork_container_process(plan, lambda plan, channel: None, cgroup.add)
                samples[variant].append(time.perf_counter() - t)
                channel.close()
                while proc._alive(pid):  # B exits at once (reparented to init)
                    time.sleep(0.001)
    finally:
        os.environ.pop("PYOCI_NO_CLONE3", None)
        cgroup.destroy_all()
        layout = detect_layout()
        for mount in {*layout.v1_mounts.values(), layout.unified_mount} - {""}:
            try:
                os.rmdir(f"{mount}/pyoci-bench-spawn")
            except FileNotFoundError:
                pass
    procs = statistics.median(samples["cgroup.procs"])
    return {
        "layout": detect_layout().mode,
        "kernel": os.uname().release,
        "runs": runs,
        **{
            v: {
                "median_ms": round(statistics.median(s) * 1000, 2),
                "min_max_ms": [round(min(s) * 1000, 2), round(max(s) * 1000, 2)],
                "ratio_to_cgroup_procs": round(statistics.median(s) / procs, 2),
            }
            for v, s in samples.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", default="")
    parser.add_argument("--spawn", action="store_true", help="time only the fork of A and B (clone3 vs cgroup.procs)")
    args = parser.parse_args()
    if args.spawn:
        result = measure_spawn(args.runs)
        print(f"spawn step, {result['runs']} interleaved runs, cgroup layout {result['layout']}, {result['kernel']}")
        for v in ("clone3", "cgroup.procs"):
            r = result[v]
            print(
                f"  {v}: median {r['median_ms']} ms, {r['min_max_ms'][0]}-{r['min_max_ms'][1]} ms, "
                f"{r['ratio_to_cgroup_procs']} of cgroup.procs"
            )
        print("JSON " + json.dumps(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    result = measure(args.runs)
    print(f"create phase, {result['runs']} interleaved runs, cgroup layout {result['layout']}, {result['kernel']}")
    print("| variant | median | min-max | ratio to runc |\n|---|---|---|---|")
    for v in VARIANTS:
        r = result[v]
        print(f"| {v} | {r['median_ms']} ms | {r['min_max_ms'][0]}-{r['min_max_ms'][1]} ms | {r['ratio_to_runc']} |")
    print("JSON " + json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
