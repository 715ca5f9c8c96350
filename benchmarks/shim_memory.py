"""Where a pyoci shim's memory goes: PSS/USS per shim and per container, and private pages by mapping.

    python -m benchmarks.shim_memory [--json out.json]

Starts a private containerd (the integration harness), runs one container with a shim of its own and then a
pod of 10 containers grouped in one shim, and reads each shim's ``/proc/PID/smaps``: PSS, USS (private
clean + dirty) and the private dirty pages split by mapping (anonymous mappings — CPython's allocator arenas —,
the brk heap, libpython, other libraries, stack). The template's PSS is shown apart (one per containerd,
shared by every shim). Run it twice with different settings in the environment to compare (the harness passes
its environment on to containerd, the shims and the template). ``benchmarks.shim_pages`` goes one level down:
which objects' words a shim changed on the pages it copied from the template.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from integration.harness.containerd import Containerd
from integration.harness.ctr import Ctr
from integration.harness.image import IMAGE_NAME, build_busybox_image

PYOCI = "io.containerd.pyoci.v2"


def smaps_breakdown(pid: int) -> dict[str, int]:
    """kB: Pss, Uss, and Private_Dirty by kind of mapping."""
    out = {"pss": 0, "uss": 0, "dirty_anon": 0, "dirty_heap": 0, "dirty_libpython": 0, "dirty_libs": 0}
    out["dirty_stack_other"] = 0
    kind = "dirty_stack_other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            parts = line.split()
            name = parts[5] if len(parts) > 5 else ""
            if not name:
                kind = "dirty_anon"
            elif name == "[heap]":
                kind = "dirty_heap"
            elif "libpython" in name:
                kind = "dirty_libpython"
            elif ".so" in name:
                kind = "dirty_libs"
            else:
                kind = "dirty_stack_other"
            continue
        key, _, rest = line.partition(":")
        if not rest.strip().endswith("kB"):
            continue
        value = int(rest.split()[0])
        if key == "Pss":
            out["pss"] += value
        elif key in ("Private_Clean", "Private_Dirty"):
            out["uss"] += value
            if key == "Private_Dirty":
                out[kind] += value
    return out


def measure() -> dict:
    containerd = Containerd(Path(tempfile.mkdtemp(prefix="pyoci-bench-mem-", dir="/tmp")))
    containerd.start()
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        ctr = Ctr(containerd.address, "bench", containerd.env())
        ctr("images", "import", str(build_busybox_image(containerd.base / "busybox.tar")))
        ctr("run", "--rm", "--runtime", PYOCI, IMAGE_NAME, "warm", "true")  # the template is up from here on
        time.sleep(1)
        for name, count, annotations in (
            ("one_container", 1, []),
            ("pod_of_10", 10, ["--annotation", "io.containerd.runc.v2.group=bench-pod"]),
        ):
            ids = [f"mem-{name}-{i}" for i in range(count)]
            for cid in ids:
                ctr("run", "-d", "--runtime", PYOCI, *annotations, IMAGE_NAME, cid, "sleep", "1000")
            time.sleep(1)
            shims = containerd.shim_pids()
            assert len(shims) == 1, shims
            r = smaps_breakdown(shims[0])
            templates = containerd.template_pids()
            r["template_pss"] = sum(smaps_breakdown(pid)["pss"] for pid in templates)
            r["pss_per_container"] = r["pss"] // count
            r["uss_per_container"] = r["uss"] // count
            result[name] = r
            ctr.remove(*ids)
            deadline = time.monotonic() + 20
            while containerd.shim_pids() and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        left = containerd.stop()
        if left:
            print("left behind (cleaned):", left, file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    result = measure()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
