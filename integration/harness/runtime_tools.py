"""The OCI runtime-tools validation suite (v0.9.0): built from the Go module proxy, run against a runtime.

The proxy serves ``github.com/opencontainers/runtime-tools`` v0.9.0 only, a tag without go.mod. The
module's source is copied to a writable directory, given the go.mod below (its Godeps/Godeps.json pins as
the proxy serves them: the exact revision where the proxy has it, else the nearest version it has; the
newest runtime-spec changed field types and does not build), and ``runtimetest`` plus every
``validation/<name>/`` program are built as ``<name>.t`` into /var/cache/pyoci/runtime-tools/v0.9.0,
next to the module zip's ``rootfs-amd64.tar.gz``. Builds take a file lock, so parallel sessions build once.

A ``.t`` program finds the runtime in ``$RUNTIME``, unpacks the rootfs tarball and copies ``runtimetest``
from its working directory into bundles it makes under ``$TMPDIR``, and prints TAP. Each run here gets its
own directory: ``$RUNTIME`` is a wrapper that adds ``--root <run>/root`` and records every call, so what
the run left (state dirs, cgroups, processes, mounts) is found by the ids it created and removed — never
anything of another session. Runs take a host-wide lock: the tests use fixed cgroup names.

    python -m integration.harness.runtime_tools              builds what is missing, prints the directory
    python -m integration.harness.runtime_tools --run [NAME ...]   also runs them against runc and pyoci
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from integration.harness.golang import go_env
from integration.harness.versions import CACHE
from pyoci.runtime import procfs

GO = os.environ.get("PYOCI_GO", "/usr/local/go/bin/go")
MODULE = "github.com/opencontainers/runtime-tools"
VERSION = "v0.9.0"
ROOT = CACHE / "runtime-tools"
SUITE = ROOT / VERSION
RUNC = "/usr/bin/runc"
PYOCI = str(Path(sys.executable).parent / "pyoci")
TIMEOUT = 300.0  # seconds per .t file; the slowest (linux_cgroups_network, 32 containers) takes ~2 min loaded

# Godeps/Godeps.json of v0.9.0 → what the proxy serves. Exact: tap-go, gocapability, urfave/cli v1.19.1,
# errwrap (v1.0.0 is rev 7554cd9), go.uuid v1.1.0 (Godeps says v1.1.0 too), semver v3.5.0. Nearest:
# runtime-spec 1722abf (v1.0.1-57) → 29686dbc (v1.0.1-59, 2019-02-07, the next the proxy has);
# go-multierror 886a7fb → v1.0.0; selinux 2d93b96 (v1.1-1) → v1.6.0 (the oldest served; v1.1.0 is refused);
# fileutils 4ee1cc9 → v0.5.0. The rest (logrus, gojsonschema, x/sys, testify) resolve with `go mod tidy`.
GO_MOD = """module github.com/opencontainers/runtime-tools

go 1.21

require (
	github.com/blang/semver v3.5.0+incompatible
	github.com/hashicorp/errwrap v1.0.0
	github.com/hashicorp/go-multierror v1.0.0
	github.com/mndrix/tap-go v0.0.0-20171203230836-629fa407e90b
	github.com/mrunalp/fileutils v0.5.0
	github.com/opencontainers/runtime-spec v1.0.2-0.20190207185410-29686dbc5559
	github.com/opencontainers/selinux v1.6.0
	github.com/satori/go.uuid v1.1.0
	github.com/syndtr/gocapability v0.0.0-20170704070218-db04d3cc01c8
	github.com/urfave/cli v1.19.1
)
"""

# cgroupsPath values the tests use (runtime-tools cgroups.AbsCgroupPath / RelCgroupPath), deepest first
TEST_CGROUPS = ("cgrouptest", "testdir/cgrouptest/container", "testdir/cgrouptest", "testdir")


# --------------------------------------------------------------------------------------------- build


def _go_env() -> dict[str, str]:
    return go_env(ROOT, "-modcacherw -buildvcs=false -trimpath")


def _go(*args: str, cwd: Path | None = None, **env: str) -> str:
    if not os.access(GO, os.X_OK):
        raise RuntimeError(f"no Go toolchain at {GO} (set PYOCI_GO): it builds the runtime-tools suite")
    result = subprocess.run([GO, *args], cwd=cwd, env={**_go_env(), **env}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _build() -> None:
    info = json.loads(_go("mod", "download", "-json", f"{MODULE}@{VERSION}"))
    if info.get("Error"):
        raise RuntimeError(f"go mod download {MODULE}@{VERSION}: {info['Error']}")
    with tempfile.TemporaryDirectory(prefix="build-", dir=ROOT) as work:
        src, out = Path(work) / "src", Path(work) / "suite"
        shutil.copytree(info["Dir"], src)
        for path in [src, *src.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        (src / "go.mod").write_text(GO_MOD)
        _go("mod", "tidy", cwd=src)
        out.mkdir()
        _go("build", "-ldflags", "-s -w", "-o", str(out / "runtimetest"), "./cmd/runtimetest", cwd=src, CGO_ENABLED="0")
        names = sorted(p.name for p in (src / "validation").iterdir() if p.is_dir() and p.name != "util")
        _go("build", "-ldflags", "-s -w", "-o", str(out) + "/", *[f"./validation/{n}" for n in names], cwd=src)
        for name in names:
            (out / name).rename(out / f"{name}.t")
        shutil.copy(src / "rootfs-amd64.tar.gz", out)
        (out / ".complete").write_text(GO_MOD)
        os.rename(out, SUITE)  # one rename: others see no suite or a whole one


def suite_dir() -> Path:
    """The directory of the built suite (``*.t``, ``runtimetest``, the rootfs tarball), built if absent."""
    if (SUITE / ".complete").exists():
        return SUITE
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiter finds the suite built
        if not (SUITE / ".complete").exists():
            shutil.rmtree(SUITE, ignore_errors=True)
            _build()
    return SUITE


def test_names(suite: Path) -> list[str]:
    return sorted(p.name.removesuffix(".t") for p in suite.glob("*.t"))


# ----------------------------------------------------------------------------------------------- TAP


@dataclass(frozen=True)
class Result:
    name: str
    runtime: str
    passed: bool
    ok: int  # test points that passed (a file without test points counts as one)
    total: int
    seconds: float
    returncode: int | None  # None: killed at the timeout
    output: str  # stdout + stderr of the .t
    leftovers: tuple[str, ...] = ()  # what the run left and the harness removed

    @property
    def summary(self) -> str:
        if self.returncode is None:
            return f"timeout ({self.ok} of {self.total})"
        return "pass" if self.passed else f"fail ({self.ok} of {self.total})"

    def failures(self, limit: int = 6) -> list[str]:
        """The failing TAP lines (or the output's last lines when there are none), for messages."""
        lines = [line for line in self.output.splitlines() if line.startswith("not ok")]
        if not lines:
            lines = [line for line in self.output.splitlines() if line.strip()][-limit:]
        return lines[:limit]


def parse_tap(text: str, returncode: int | None) -> tuple[bool, int, int]:
    """(passed, ok, total) of a .t's output. Files that run one lifecycle print no test point and a plan
    of ``1..0`` and report a failure as a YAML diagnostic; the ``*_fail`` ones print nothing and exit 1
    on failure: those count as one test point."""
    points = re.findall(r"^(not ok|ok)\b", text, re.MULTILINE)
    ok = points.count("ok")
    plan = re.search(r"^1\.\.(\d+)\s*$", text, re.MULTILINE)
    if not points:
        passed = returncode == 0 and not re.search(r"^\s+---\s*$", text, re.MULTILINE)
        return passed, int(passed), 1
    complete = plan is None or int(plan.group(1)) == len(points)
    return returncode == 0 and complete and ok == len(points), ok, len(points)


# ----------------------------------------------------------------------------------------------- run


def run(name: str, runtime: str, label: str = "", timeout: float = TIMEOUT, suite: Path | None = None) -> Result:
    """Run ``<name>.t`` against ``runtime`` in a directory of its own, then remove whatever it left."""
    suite = suite or suite_dir()
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".run-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the tests' cgroup names are fixed: one run on the host at a time
        base = Path(tempfile.mkdtemp(prefix="pyoci-rtt-", dir="/tmp"))
        try:
            return _run(name, runtime, label or Path(runtime).name, timeout, suite, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _run(name: str, runtime: str, label: str, timeout: float, suite: Path, base: Path) -> Result:
    base.chmod(0o755)  # a user-namespaced container's root must reach its bundle
    (base / "tmp").mkdir(mode=0o755)
    root, calls, wrapper = base / "root", base / "calls", base / "runtime"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {shlex.quote(str(calls))}\n"
        f'exec {shlex.quote(runtime)} --root {shlex.quote(str(root))} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {**os.environ, "RUNTIME": str(wrapper), "TMPDIR": str(base / "tmp")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(suite / f"{name}.t")],
        cwd=suite,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the .t we started, and the runtime calls it made
        out, _ = proc.communicate()
        returncode = None
    seconds = time.monotonic() - started
    text = out.decode("utf-8", "replace")
    passed, ok, total = parse_tap(text, returncode)
    leftovers = cleanup(wrapper, root, calls, base)
    return Result(name, label, passed and returncode is not None, ok, total, seconds, returncode, text, leftovers)


# ------------------------------------------------------------------------------------------- cleanup


def _cgroup_mounts() -> list[str]:
    return [m.mount_point for m in procfs.mounts() if m.fs_type in ("cgroup", "cgroup2")]


def _created_ids(calls: Path) -> list[str]:
    ids = []
    if calls.exists():
        for line in calls.read_text().splitlines():
            words = line.split()
            if words[:1] in (["create"], ["run"]) and len(words) > 1:
                ids.append(words[-1])
    return ids


def _kill_cgroup(path: Path) -> list[int]:
    """SIGKILL what is in ``path`` (and its children), wait for it to go, remove the directories."""
    killed: list[int] = []
    for _ in range(100):
        pids = []
        for procs in sorted(path.rglob("cgroup.procs")):
            try:
                pids += [int(p) for p in procs.read_text().split()]
            except OSError:
                pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    path.rmdir()
    return killed


def cleanup(wrapper: Path, root: Path, calls: Path, base: Path) -> tuple[str, ...]:
    """Remove what a run left: containers still in its state root (``delete --force``), cgroups of the ids
    it created and of the tests' fixed names (killing what is in them), mounts under its directory."""
    found = []
    ids = _created_ids(calls)
    for cid in sorted(os.listdir(root)) if root.is_dir() else []:
        found.append(f"container {cid} (state left; deleted with --force)")
        subprocess.run([str(wrapper), "delete", "--force", cid], capture_output=True, timeout=60)
        if (root / cid).exists():
            found.append(f"container {cid}: delete --force left its state dir")
    for mount in _cgroup_mounts():
        candidates = [*(f"{prefix}{cid}" for cid in ids for prefix in ("", "pyoci/")), *TEST_CGROUPS]
        for rel in candidates:
            path = Path(mount) / rel
            if path.is_dir():
                try:
                    killed = _kill_cgroup(path)
                except OSError as exc:
                    found.append(f"cgroup {path}: cannot remove: {exc}")
                    continue
                if rel not in TEST_CGROUPS[2:]:  # runc and pyoci both leave the relative path's parents
                    found.append(f"cgroup {path}" + (f" (killed {len(killed)} processes)" if killed else ""))
    for point in reversed(procfs.mount_points()):
        if point.startswith(str(base) + "/"):
            found.append(f"mount {point}")
            subprocess.run(["umount", "-l", point], capture_output=True)
    return tuple(found)


# ------------------------------------------------------------------------------------------ the table


def table(results: dict[str, dict[str, Result]], runtimes: tuple[str, ...]) -> str:
    width = max(len(name) for name in results)
    lines = [f"{'file':<{width}}  " + "  ".join(f"{r:<22}" for r in runtimes)]
    for name, by_runtime in results.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{by_runtime[r].summary:<22}" for r in runtimes))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    suite = suite_dir()
    print(f"{suite} ({time.monotonic() - started:.1f} s)")
    if not argv or argv[0] != "--run":
        return 0
    names = argv[1:] or test_names(suite)
    runtimes = {"runc": RUNC, "pyoci": PYOCI}
    results: dict[str, dict[str, Result]] = {}
    for name in names:
        results[name] = {label: run(name, path, label, suite=suite) for label, path in runtimes.items()}
        line = "  ".join(f"{label} {r.summary} {r.seconds:.1f}s" for label, r in results[name].items())
        leftovers = [f"{label}: {x}" for label, r in results[name].items() for x in r.leftovers]
        print(f"{name}: {line}" + (f"  left: {leftovers}" if leftovers else ""), flush=True)
    print(table(results, tuple(runtimes)))
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
