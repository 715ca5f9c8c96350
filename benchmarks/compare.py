"""Side-by-side measurements: pyoci's shim against containerd's runc shim, on this machine, in one run.

    python -m benchmarks.compare [--runs 20] [--quick] [--json out.json] [--png chart.png]
                                 [--only run,cold,exec,binaries,parallel,memory] [--parallel 20,50,100]

Paired runs alternate the two runtimes (so drift and noise hit both alike); we report medians, min-max and
the pyoci/runc ratio. Measured:
  run      a whole ``ctr run --rm busybox true`` (warm: pyoci's template is up)
  cold     the same with no template (as after boot or 30 s idle): pyoci's template is ended before each run
  exec     ``ctr task exec ... true`` into a running container
  binaries the shim binary's ``start`` (exec to address printed) and ``delete`` (after a shim that left
           nothing behind), which containerd runs and waits for around every container, pyoci and runc shim
  parallel 20, 50 and 100 parallel ``ctr run -d`` until all are RUNNING, failures counted
  memory   PSS and USS (private pages) of the shim per container, from /proc/PID/smaps_rollup: 10 containers
           with a shim each, and 10 grouped in one shim (a pod); pyoci's template shown apart
``--quick`` is 5 runs and 20 parallel starts (a smoke run: the ratios are noisier). ``--png`` draws the ratios
(pyoci / runc shim, lower is better) with matplotlib, an optional extra (``pip install .[bench]``); without
it the chart is skipped with a message and everything else still runs.
A private containerd is started for the run and stopped at the end (nothing is timed against a
system containerd). The shims run under the interpreter of the venv the benchmark runs from (the one in
``containerd-shim-pyoci-v2``'s first line): it is printed first, with whether it is a PGO/LTO build, since
that changes pyoci's times (Debian's /usr/bin/python3 is ~30 % faster to start than an unoptimised build).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
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

_PROBE = r"""
import json, sys, sysconfig
args = sysconfig.get_config_var("CONFIG_ARGS") or ""
maps = open("/proc/self/maps").read()
print(json.dumps({
    "executable": sys.executable,
    "version": sys.version.split()[0],
    "implementation": sys.implementation.name,
    "pgo": "--enable-optimizations" in args,
    "lto": "--with-lto" in args,
    "shared_libpython": "libpython" in maps,
    "config_args": args,
}))
"""


def interpreter_info(shim: str = SHIM) -> dict:
    """The interpreter the shim runs under (its first line), what it is, and how it was built. CONFIG_ARGS
    records ``--enable-optimizations`` (PGO) and ``--with-lto`` for builds made with them; Debian builds
    its PGO+LTO /usr/bin/python3.X by its own rules, which CONFIG_ARGS does not show: named apart."""
    with open(shim) as f:
        head = f.read(600)
    first = head.split("\n", 1)[0]
    kind = "pip console-script wrapper (imports re)" if "\nimport re\n" in head else "lean"
    interpreter = first[2:].split()[0] if first.startswith("#!/") else sys.executable
    out = subprocess.run([interpreter, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    info["realpath"] = os.path.realpath(interpreter)
    info["debian_build"] = info["realpath"].startswith("/usr/bin/python3")
    info["shim_entry_script"] = kind
    info["editable_install"] = not any(
        (Path(p) / "pyoci" / "shim" / "main.py").is_file() for p in sys.path if p.endswith("-packages")
    )
    return info


def describe_interpreter(info: dict) -> str:
    if info["debian_build"]:
        build = "Debian's build (PGO+LTO)"
    elif info["pgo"] or info["lto"]:
        build = "+".join(name for name in ("PGO", "LTO") if info[name.lower()]) + " build"
    else:
        build = "no PGO/LTO in its CONFIG_ARGS"
    libpython = "shared libpython" if info["shared_libpython"] else "static libpython"
    install = "editable install" if info["editable_install"] else "regular install"
    return (
        f"interpreter: {info['executable']} -> {info['realpath']} ({info['implementation']} {info['version']}, "
        f"{build}, {libpython}); shim entry: {info['shim_entry_script']}, {install}"
    )


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
    return summary(samples[PYOCI], samples[RUNC])


def summary(pyoci: list[float], runc: list[float]) -> dict:
    """Medians, min-max (ms) and the ratio of the medians, from samples in seconds."""
    med_p, med_r = statistics.median(pyoci) * 1000, statistics.median(runc) * 1000
    return {
        "pyoci_ms": round(med_p, 1),
        "runc_ms": round(med_r, 1),
        "ratio": round(med_p / med_r, 2),
        "pyoci_min_max_ms": [round(min(pyoci) * 1000, 1), round(max(pyoci) * 1000, 1)],
        "runc_min_max_ms": [round(min(runc) * 1000, 1), round(max(runc) * 1000, 1)],
    }


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


def _wait_for(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return path.read_text()


def bench_binaries(containerd: Containerd, runs: int) -> dict:
    """The shim binary's ``start`` (exec until it printed the address: what containerd waits for before it can
    send Create) and ``delete`` (run by containerd after every shim disconnect, and waited for), pyoci's and
    the runc shim's, interleaved. Each start's daemon is ended and its socket removed after the sample; pyoci's
    template stays up (the warm path, as in a running node)."""
    binaries = {PYOCI: SHIM, RUNC: str(Path(containerd.binary).parent / "containerd-shim-runc-v2")}
    if not os.path.exists(binaries[RUNC]):
        binaries[RUNC] = shutil.which("containerd-shim-runc-v2", path=containerd.env()["PATH"]) or binaries[RUNC]
    env = containerd.env()
    work = Path(tempfile.mkdtemp(prefix="pyoci-bench-bin-"))
    samples: dict[tuple[str, str], list[float]] = {(rt, a): [] for rt in binaries for a in ("start", "delete")}

    def run(runtime: str, action: str, cid: str) -> None:
        bundle = work / cid  # containerd's bundle dir is named after the container (the runc shim relies on it)
        bundle.mkdir()
        (bundle / "config.json").write_text("{}")
        (bundle / "runtime").write_text("runc")  # the runc shim's record of its runtime binary, read by delete
        argv = [binaries[runtime], "-namespace", "bench", "-address", containerd.address]
        argv += ["-publish-binary", containerd.binary, "-id", cid]
        argv += ["-bundle", str(bundle), "delete"] if action == "delete" else ["start"]
        t = time.perf_counter()
        out = subprocess.run(argv, cwd=bundle, env=env, capture_output=True, stdin=subprocess.DEVNULL)
        samples[runtime, action].append(time.perf_counter() - t)
        assert out.returncode == 0, (argv, out)
        if action == "start":
            address = out.stdout.decode().strip()
            assert address.startswith("unix://"), out
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(_wait_for(bundle / "shim.pid")), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.unlink(address.removeprefix("unix://"))
        shutil.rmtree(bundle, ignore_errors=True)

    try:
        for round_ in range(2):  # the template (started in the background by the first), and the page cache
            for runtime in binaries:
                run(runtime, "start", f"warm{round_}-{runtime[14:18]}")
            time.sleep(1)
        for i in range(runs):
            for action in ("start", "delete"):
                for runtime in (PYOCI, RUNC) if i % 2 == 0 else (RUNC, PYOCI):
                    run(runtime, action, f"b{action[0]}-{runtime[14:18]}-{i}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {action: summary(samples[PYOCI, action], samples[RUNC, action]) for action in ("start", "delete")}


def _end_templates(containerd: Containerd) -> None:
    for pid in containerd.template_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while containerd.template_pids() and time.monotonic() < deadline:
        time.sleep(0.01)


def bench_cold(ctr: Ctr, containerd: Containerd, runs: int) -> dict:
    """``ctr run --rm`` with no pyoci template (as after boot or 30 s idle): it is ended (untimed) before each
    pyoci run, so the shim's start forks the daemon itself, which imports everything, and starts a new
    template. The runc shim keeps no such state: its runs are warm ones, interleaved for the same noise."""
    samples: dict[str, list[float]] = {PYOCI: [], RUNC: []}
    for i in range(runs):
        for runtime in (PYOCI, RUNC) if i % 2 == 0 else (RUNC, PYOCI):
            if runtime == PYOCI:
                _end_templates(containerd)
            cid = f"bench-cold-{runtime[14:18]}-{i}"
            samples[runtime].append(
                timed(lambda rt=runtime, c=cid: ctr("run", "--rm", "--runtime", rt, IMAGE_NAME, c, "true"))
            )
    return summary(samples[PYOCI], samples[RUNC])


def bench_parallel(ctr: Ctr, count: int = 20) -> dict:
    """``count`` parallel ``ctr run -d`` until all are RUNNING (one sample per runtime; a failed ``ctr run`` or
    a task not RUNNING within 120 s counts as failed)."""
    result = {}
    for runtime in (PYOCI, RUNC) if count % 2 == 0 else (RUNC, PYOCI):
        tag = runtime.split(".")[2]
        ids = [f"par-{tag}-{i}" for i in range(count)]
        t = time.perf_counter()
        runs = [ctr.popen("run", "-d", "--runtime", runtime, IMAGE_NAME, cid, "sleep", "1000") for cid in ids]
        failed = sum(1 for p in runs if p.wait() != 0)
        running = 0
        while time.perf_counter() - t < 120:
            running = sum(ctr.task_status(c) == "RUNNING" for c in ids)
            if running >= count - failed:
                break
            time.sleep(0.02)
        result[f"{tag}_s"] = round(time.perf_counter() - t, 2)
        result[f"{tag}_failed"] = max(failed, count - running)
        ctr.remove(*ids)
    return result


def rollup_kb(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup's counters in kB (Pss, Private_Clean, Private_Dirty, ...); {} if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def pss_kb(pid: int) -> int:
    return rollup_kb(pid).get("Pss", 0)


def uss_kb(pid: int) -> int:
    """Pages only this process maps (what ending it would free)."""
    r = rollup_kb(pid)
    return r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)


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
            result[f"{name}_uss_kb_per_container"] = sum(uss_kb(pid) for pid in shims) // count
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


def table(results: dict) -> str:
    """The results as a markdown table (medians, min-max, ratio), as README's performance table."""
    rows = [
        ("`ctr run --rm busybox true`, warm", "ctr_run_rm_true"),
        ("... cold (no template)", "ctr_run_rm_true_cold"),
    ]
    rows += [("`ctr task exec ... true`", "ctr_task_exec_true"), ("shim binary `start`", "shim_binary_start")]
    rows += [("shim binary `delete`", "shim_binary_delete")]
    lines = ["| measure (median, min-max) | pyoci | runc shim + runc | ratio |", "|---|---|---|---|"]
    for label, key in rows:
        if key in results:
            r = results[key]
            p, q = r["pyoci_min_max_ms"], r["runc_min_max_ms"]
            lines.append(
                f"| {label} | {r['pyoci_ms']} ms ({p[0]}-{p[1]}) | {r['runc_ms']} ms ({q[0]}-{q[1]}) | {r['ratio']} |"
            )
    for key, r in results.items():
        if key.startswith("parallel_run_d_"):
            n = key.rsplit("_", 1)[1]
            lines.append(
                f"| {n} parallel `ctr run -d` until RUNNING (failed) | {r['pyoci_s']} s ({r['pyoci_failed']}) "
                f"| {r['runc_s']} s ({r['runc_failed']}) | {round(r['pyoci_s'] / r['runc_s'], 2)} |"
            )
    m = results.get("memory")
    if m:
        for label, kind in (("one shim each", "one_each"), ("10 in one shim (pod)", "grouped")):
            p_pss, r_pss = m[f"pyoci_{kind}_pss_kb_per_container"], m[f"runc_{kind}_pss_kb_per_container"]
            with_t = m[f"pyoci_{kind}_pss_kb_per_container_with_template"]
            lines.append(
                f"| shim PSS per container, {label} (+ template share) | {p_pss / 1024:.2f} MB "
                f"({with_t / 1024:.2f} MB) | {r_pss / 1024:.2f} MB | {with_t / r_pss:.2f} |"
            )
            p_uss, r_uss = m[f"pyoci_{kind}_uss_kb_per_container"], m[f"runc_{kind}_uss_kb_per_container"]
            lines.append(
                f"| shim USS per container, {label} | {p_uss / 1024:.2f} MB | {r_uss / 1024:.2f} MB "
                f"| {p_uss / r_uss:.2f} |"
            )
    return "\n".join(lines)


def ratios(results: dict) -> dict[str, float]:
    """Every pyoci / runc-shim ratio of a run (lower is better), for the chart."""
    out = {}
    names = {
        "ctr_run_rm_true": "run --rm warm",
        "ctr_run_rm_true_cold": "run --rm cold",
        "ctr_task_exec_true": "exec",
        "shim_binary_start": "shim start",
        "shim_binary_delete": "shim delete",
    }
    for key, label in names.items():
        if key in results:
            out[label] = results[key]["ratio"]
    for key, r in results.items():
        if key.startswith("parallel_run_d_"):
            out[f"{key.rsplit('_', 1)[1]} parallel"] = round(r["pyoci_s"] / r["runc_s"], 2)
    m = results.get("memory")
    if m:
        for label, kind in (("PSS one each", "one_each"), ("PSS pod of 10", "grouped")):
            out[label] = round(
                m[f"pyoci_{kind}_pss_kb_per_container_with_template"] / m[f"runc_{kind}_pss_kb_per_container"], 2
            )
    return out


def chart(results: dict, path: str) -> str:
    """Draw the ratios as one PNG bar chart; returns what happened (matplotlib is an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"chart skipped: matplotlib is not installed (pip install '.[bench]'); {path} not written"
    data = ratios(results)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(list(data), list(data.values()), color=["tab:green" if v <= 1 else "tab:red" for v in data.values()])
    ax.bar_label(bars, fmt="%.2f")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("pyoci / runc shim (lower is better)")
    ax.set_title(f"pyoci vs containerd's runc shim, {results['date']}, {results['runs']} interleaved runs")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart written to {path}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 runs, 20 parallel starts: a smoke run")
    parser.add_argument("--json", default="")
    parser.add_argument("--png", default="")
    parser.add_argument("--only", default="run,cold,exec,binaries,parallel,memory")
    parser.add_argument("--parallel", default="20,50,100", help="how many parallel starts, comma-separated")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.parallel = min(args.runs, 5), "20"
    info = interpreter_info()
    print(describe_interpreter(info), flush=True)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": args.runs, "interpreter": info}
    containerd = Containerd(Path(tempfile.mkdtemp(prefix="pyoci-bench-", dir="/tmp")))
    containerd.start()
    try:
        ctr = Ctr(containerd.address, "bench", containerd.env())
        ctr("images", "import", str(build_busybox_image(containerd.base / "busybox.tar")))
        only = args.only.split(",")
        phases = [
            ("run", "ctr_run_rm_true", "ctr run --rm true (warm)", lambda: bench_run(ctr, args.runs)),
            (
                "cold",
                "ctr_run_rm_true_cold",
                "ctr run --rm true (cold)",
                lambda: bench_cold(ctr, containerd, args.runs),
            ),
            ("exec", "ctr_task_exec_true", "ctr task exec true", lambda: bench_exec(ctr, args.runs)),
            ("binaries", "shim_binary", "shim binary start/delete", lambda: bench_binaries(containerd, args.runs)),
        ]
        for n in (int(x) for x in args.parallel.split(",") if x):
            phases.append(
                ("parallel", f"parallel_run_d_{n}", f"{n} parallel ctr run -d", lambda n=n: bench_parallel(ctr, n))
            )
        phases.append(("memory", "memory", "memory", lambda: bench_memory(ctr, containerd)))
        for name, key, label, fn in phases:
            if name not in only:
                continue
            result = fn()
            if name == "binaries":
                results["shim_binary_start"], results["shim_binary_delete"] = result["start"], result["delete"]
            else:
                results[key] = result
            print(f"{label}:", result, flush=True)
    finally:
        left = containerd.stop()
        if left:
            print("benchmark left behind (cleaned):", left, file=sys.stderr)
    print(f"\n{results['date']}, {args.runs} interleaved runs; {describe_interpreter(info)}\n{table(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"JSON written to {args.json}")
    if args.png:
        print(chart(results, args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
