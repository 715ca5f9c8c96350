"""CPU time of the cold paths: ``pyoci`` commands and a shim daemon's imports, for installs side by side.

    python -m benchmarks.cold_path [--runs 10] [--json out.json] [LABEL=VENV ...]

containerd's runc shim and the runtime-tools suite start ``pyoci`` for every operation, and a shim after boot
(or 30 s idle) imports everything before it answers: interpreter start and imports are most of what these cost,
and in a TCG guest every millisecond of CPU here is ~30 ms. For each venv given (default: this one), each
sample times, by the process's own CPU (user + system from ``wait4``, its waited-for children included) and
wall clock: ``pyoci --version``; ``state`` of a missing and of a created container; ``create``, ``start`` and
``delete`` of a busybox bundle (``true``); and a python that imports what the shim template preloads
(``zygote._preload``). The venvs alternate within each round, so drift hits all alike; medians are printed.
Compare a checkout with another by installing each into a venv of its own (``pip install --no-deps``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from integration.harness.bundle import make_bundle

PRELOAD = "from pyoci.shim.zygote import _preload; _preload()"


def _spawn(argv: list[str], err: str) -> tuple[float, float, int]:
    """(CPU ms, wall ms, exit code) of one run of ``argv`` (stdout to /dev/null, stderr appended to ``err``)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, err, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
    ]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = (time.perf_counter() - start) * 1000
    return (usage.ru_utime + usage.ru_stime) * 1000, wall, os.waitstatus_to_exitcode(status)


def _round(venv: Path, bundle: str, work: Path, n: int, record) -> None:
    pyoci, python = str(venv / "bin" / "pyoci"), str(venv / "bin" / "python3")
    err = str(work / "stderr")
    root = [pyoci, "--root", str(work / f"root-{venv.name}")]
    cid = f"cold-{os.getpid()}-{n}"

    def run(name: str, argv: list[str], expect: int = 0) -> tuple[float, float]:
        cpu, wall, code = _spawn(argv, err)
        if code != expect:
            raise SystemExit(f"{' '.join(argv)} exited {code} (expected {expect}); see {err}")
        if name:
            record(name, cpu, wall)
        return cpu, wall

    run("pyoci --version", [pyoci, "--version"])
    run("pyoci state (missing)", [*root, "state", "missing"], expect=1)
    create = run("pyoci create", [*root, "create", "--bundle", bundle, cid])
    run("pyoci state (created)", [*root, "state", cid])
    start = run("pyoci start", [*root, "start", cid])
    time.sleep(0.05)  # the init (true) exits
    delete = run("pyoci delete", [*root, "delete", cid])
    record("create + start + delete", create[0] + start[0] + delete[0], create[1] + start[1] + delete[1])
    run("python -c pass", [python, "-c", "pass"])
    run("shim template imports", [python, "-c", PRELOAD])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--json", help="write every sample here")
    p.add_argument("venvs", nargs="*", help="LABEL=VENV (default: this interpreter's venv)")
    args = p.parse_args(argv)
    venvs = dict(v.split("=", 1) for v in args.venvs) or {"this": str(Path(sys.executable).parent.parent)}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {label: {} for label in venvs}
    with tempfile.TemporaryDirectory(prefix="pyoci-cold-", dir="/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        bundle = make_bundle(work / "bundle", "cold-path", ["true"])
        for n in range(args.runs):
            for label, venv in venvs.items():

                def record(name: str, cpu: float, wall: float, label: str = label) -> None:
                    samples[label].setdefault(name, []).append((cpu, wall))

                _round(Path(venv), str(bundle.path), work, n, record)
    print(f"interpreter: {sys.version.split()[0]}; {args.runs} runs; medians, CPU (user+sys) / wall, ms")
    print(f"{'':<26}" + "".join(f"{label:>22}" for label in venvs))
    for name in next(iter(samples.values())):
        cells = []
        for label in venvs:
            xs = samples[label][name]
            cells.append(f"{statistics.median(x[0] for x in xs):>10.1f} / {statistics.median(x[1] for x in xs):>7.1f}")
        print(f"{name:<26}" + "".join(f"{c:>22}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
