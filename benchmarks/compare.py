"""Side-by-side measurements: pyoci's shim against containerd's runc shim, on this machine, in one run.

    python -m benchmarks.compare [--runs 20] [--json out.json]

Paired runs alternate the two runtimes (so drift and noise hit both alike); we report medians and the
pyoci/runc ratio. Measured:
  run      a whole ``ctr run --rm busybox true``
  exec     ``ctr task exec ... true`` into a running container
  start    the shim's ``start`` command alone (pyoci only: the runc shim's needs a real containerd peer)
  parallel 20 parallel ``ctr run -d`` until all are RUNNING
  memory   PSS of the shim per container: 10 containers with a shim each, and 10 grouped in one shim
A private containerd is started for the run and stopped at the end (nothing is timed against a
system containerd).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from integration.harness.containerd import Containerd
from integration.harness.ctr import Ctr
from integration.harness.image import IMAGE_NAME, build_busybox_image

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"
SHIM = str(Path(sys.executable).parent / "containerd-shim-pyoci-v2")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paired(runs: int, fn) -> dict:
    samples: dict[str, list[float]] = {PYOCI: [], RUNC: []}
    for i in range(runs):
        order = (PYOCI, RUNC) if i % 2 == 0 else (RUNC, PYOCI)
        for runtime in order:
            samples[runtime].append(timed(lambda runtime=runtime, i=i: fn(runtime, i)))
    med = {rt: statistics.median(v) * 1000 for rt, v in samples.items()}
    return {"pyoci_ms": round(med[PYOCI], 1), "runc_ms": round(med[RUNC], 1), "ratio": round(med[PYOCI] / med[RUNC], 2)}


def bench_run(ctr: Ctr, runs: int) -> dict:
    def one(runtime: str, i: int) -> None:
        ctr("run", "--rm", "--runtime", runtime, IMAGE_NAME, f"bench-run-{runtime[14:18]}-{i}", "true")

    for runtime in (PYOCI, RUNC):  # warm caches (page cache, imports)
        one(runtime, 999)
    return paired(runs, one)


def bench_exec(ctr: Ctr, runs: int) -> dict:
    for runtime in (PYOCI, RUNC):
        ctr("run", "-d", "--runtime", runtime, IMAGE_NAME, f"bench-exec-{runtime[14:18]}", "sleep", "1000")
    try:
        return paired(runs, lambda rt, i: ctr("tasks", "exec", "--exec-id", f"e{i}", f"bench-exec-{rt[14:18]}", "true"))
    finally:
        ctr.remove(*(f"bench-exec-{runtime[14:18]}" for runtime in (PYOCI, RUNC)))


def bench_start(containerd: Containerd, runs: int) -> dict:
    """The ``start`` command alone: what containerd waits for before it can send Create."""
    samples = []
    for i in range(runs):
        bundle = Path(tempfile.mkdtemp(prefix="pyoci-bench-start-"))
        (bundle / "config.json").write_text("{}")
        argv = [
            SHIM,
            "-namespace",
            "bench",
            "-address",
            containerd.address,
            "-publish-binary",
            "x",
            "-id",
            f"s{i}",
            "start",
        ]
        t = time.perf_counter()
        out = subprocess.run(argv, cwd=bundle, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
        assert out.stdout.startswith("unix://"), out
        os.kill(int((bundle / "shim.pid").read_text()), 15)
        subprocess.run(["rm", "-rf", str(bundle)], check=False)
    return {"pyoci_ms": round(statistics.median(samples) * 1000, 1)}


def bench_parallel(ctr: Ctr, count: int = 20) -> dict:
    """``count`` parallel ``ctr run -d`` until all are RUNNING (one sample per runtime)."""
    result = {}
    for runtime in (PYOCI, RUNC):
        tag = runtime.split(".")[2]
        ids = [f"par-{tag}-{i}" for i in range(count)]
        t = time.perf_counter()
        runs = [ctr.popen("run", "-d", "--runtime", runtime, IMAGE_NAME, cid, "sleep", "1000") for cid in ids]
        failed = sum(1 for p in runs if p.wait() != 0)
        while time.perf_counter() - t < 120 and sum(ctr.task_status(c) == "RUNNING" for c in ids) < count:
            time.sleep(0.02)
        result[f"{tag}_s"] = round(time.perf_counter() - t, 2)
        result[f"{tag}_failed"] = failed
        ctr.remove(*ids)
    return result


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def bench_memory(ctr: Ctr, containerd: Containerd, count: int = 10) -> dict:
    result = {}
    for runtime in (PYOCI, RUNC):
        for grouped in (False, True):
            deadline = time.monotonic() + 20  # shims of an earlier phase must be gone, or they would be counted
            while containerd.shim_pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            ids = [f"mem-{runtime[14:18]}-{'g' if grouped else 's'}-{i}" for i in range(count)]
            for cid in ids:
                annotations = []
                if grouped:
                    annotations = ["--annotation", "io.containerd.runc.v2.group=bench-" + runtime[14:18]]
                ctr("run", "-d", "--runtime", runtime, *annotations, IMAGE_NAME, cid, "sleep", "1000")
            time.sleep(0.5)
            shims = containerd.shim_pids()
            name = f"{runtime.split('.')[2]}_{'grouped' if grouped else 'one_each'}"
            result[f"{name}_shims"] = len(shims)
            result[f"{name}_pss_kb_per_container"] = sum(pss_kb(pid) for pid in shims) // count
            if runtime == PYOCI:
                # the template (fork server) is one per containerd, shared by every shim on the node: shown apart,
                # and added in as if these were the node's only containers (the worst case)
                template = sum(pss_kb(pid) for pid in containerd.template_pids())
                result[f"{name}_template_pss_kb"] = template
                result[f"{name}_pss_kb_per_container_with_template"] = (
                    result[f"{name}_pss_kb_per_container"] + template // count
                )
            ctr.remove(*ids)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", default="")
    parser.add_argument("--only", default="run,exec,start,parallel,memory")
    args = parser.parse_args()
    containerd = Containerd(Path(tempfile.mkdtemp(prefix="pyoci-bench-", dir="/tmp")))
    containerd.start()
    results: dict = {}
    try:
        ctr = Ctr(containerd.address, "bench", containerd.env())
        ctr("images", "import", str(build_busybox_image(containerd.base / "busybox.tar")))
        only = args.only.split(",")
        if "run" in only:
            results["ctr_run_rm_true"] = bench_run(ctr, args.runs)
            print("ctr run --rm true:", results["ctr_run_rm_true"], flush=True)
        if "exec" in only:
            results["ctr_task_exec_true"] = bench_exec(ctr, args.runs)
            print("ctr task exec true:", results["ctr_task_exec_true"], flush=True)
        if "start" in only:
            results["shim_start"] = bench_start(containerd, args.runs)
            print("shim start:", results["shim_start"], flush=True)
        if "parallel" in only:
            results["parallel_run_d_20"] = bench_parallel(ctr)
            print("20 parallel ctr run -d:", results["parallel_run_d_20"], flush=True)
        if "memory" in only:
            results["memory"] = bench_memory(ctr, containerd)
            print("memory:", results["memory"], flush=True)
    finally:
        left = containerd.stop()
        if left:
            print("benchmark left behind (cleaned):", left, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
