"""Which of the template's pages a forked shim copied, and which objects' words it changed there.

    python -m benchmarks.shim_pages [--pod 10]

Starts a private containerd (the integration harness), replaces its shim template with an instrumented one (the real
template, which also writes the address, size and type of every object it holds after preloading), runs one container
(or a pod), then compares the shim with the template page by page: /proc/PID/pagemap tells whether a page is still the
template's (same frame) or was copied; /proc/PID/mem tells which 8-byte words differ, and the object map which object
each word belongs to (``str +0``: a reference count; ``code +48``: a code object's warm-up counter, written by every
call; ``code +>=168``: its bytecode being quickened; ``type +>=168``: a class's flags and method-cache version tag).
It also lists the modules the shim imported after the fork (each costs its full size per shim). Pages copied whose
content is equal again (``copied_same``) were written and restored (incref then decref). Words outside any object
known to the map are counted as ``?`` (constants and names of code objects, which the collector does not traverse, and
new objects in free slots of the template's pools), ``poolhdr`` when in a pool header of CPython's allocator.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import marshal
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAGE = 4096
PYOCI = "io.containerd.pyoci.v2"


# --- in the instrumented template -------------------------------------------------------------------------------


def _template(argv: list[str], dump: str) -> int:
    """Run the real template with its preload and children instrumented."""
    from pyoci.shim import zygote
    from pyoci.shim.flags import parse_flags

    preload, child = zygote._preload, zygote._child

    def instrumented_preload() -> None:
        preload()
        gc.unfreeze()
        objs = gc.get_objects()
        seen = {id(o): (id(o) - 16, sys.getsizeof(o), type(o).__name__, _label(o), 1) for o in objs}  # GC head
        for o in objs:
            for r in gc.get_referents(o):
                if id(r) not in seen and not gc.is_tracked(r):
                    seen[id(r)] = (id(r), sys.getsizeof(r), type(r).__name__, _label(r), 0)
        data = list(seen.values())
        del objs, seen
        gc.collect()
        gc.freeze()
        Path(dump).write_bytes(marshal.dumps(data))

    def instrumented_child(request: dict, listener) -> None:
        before = set(sys.modules)

        def report(*_: object) -> None:
            Path(dump + ".imports").write_text("\n".join(sorted(set(sys.modules) - before)))

        signal.signal(signal.SIGUSR1, report)
        child(request, listener)

    zygote._preload, zygote._child = instrumented_preload, instrumented_child
    sys.argv = ["containerd-shim-pyoci-v2", *argv]
    return zygote.main(parse_flags(argv))


def _label(o: object) -> str:
    try:
        if isinstance(o, type(_label)):
            return f"{o.__module__}.{o.__qualname__}"
        if isinstance(o, type(_label.__code__)):
            return f"{o.co_filename.rsplit('/', 1)[-1]}:{o.co_qualname}"
        if isinstance(o, type):
            return f"{o.__module__}.{o.__qualname__}"
        if isinstance(o, str):
            return o[:40]
    except Exception:
        pass
    return ""


# --- the comparison -------------------------------------------------------------------------------------------


def writable_maps(pid: int) -> list[tuple[int, int, str]]:
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        p = line.split()
        if "w" not in p[1] or "p" not in p[1]:
            continue
        start, end = (int(x, 16) for x in p[0].split("-"))
        name = p[5] if len(p) > 5 else ""
        kind = "anon" if not name else "heap" if name == "[heap]" else "libpython" if "libpython" in name else "other"
        out.append((start, end, kind))
    return out


def frames(pid: int, start: int, end: int) -> list[int | None]:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        raw = f.read((end - start) // PAGE * 8)
    return [v & ((1 << 55) - 1) if v >> 63 else None for (v,) in struct.iter_unpack("Q", raw)]


def compare(template: int, shim: int, objects: list) -> dict[str, collections.Counter]:
    objects = sorted(objects)
    starts = [o[0] for o in objects]
    pages: collections.Counter = collections.Counter()
    by_type: collections.Counter = collections.Counter()
    by_object: collections.Counter = collections.Counter()
    template_maps = {(a, b) for a, b, _ in writable_maps(template)}
    with open(f"/proc/{template}/mem", "rb") as tmem, open(f"/proc/{shim}/mem", "rb") as smem:
        for start, end, kind in writable_maps(shim):
            ours = frames(shim, start, end)
            theirs = frames(template, start, end) if (start, end) in template_maps or kind == "heap" else []
            for i, frame in enumerate(ours):
                other = theirs[i] if i < len(theirs) else None
                if frame is None:
                    continue
                if other is None or other == frame:
                    pages[kind, "new" if other is None else "shared"] += 1
                    continue
                addr = start + i * PAGE
                try:
                    tmem.seek(addr)
                    smem.seek(addr)
                    a, b = tmem.read(PAGE), smem.read(PAGE)
                except OSError:
                    continue
                words = [j for j in range(0, PAGE, 8) if a[j : j + 8] != b[j : j + 8]]
                pages[kind, "copied" if words else "copied_same"] += 1
                seen = set()
                for j in words:
                    w = addr + j
                    k = bisect.bisect_right(starts, w) - 1
                    if k >= 0 and starts[k] <= w < starts[k] + objects[k][1]:
                        o = objects[k]
                        offset = w - o[0] - (16 if o[4] else 0)
                        seen.add(f"{o[2]} +{offset if offset < 168 else '>=168'}")
                        by_object[o[2], o[3]] += 1
                    else:
                        seen.add("poolhdr" if kind == "anon" and w % 16384 < 48 else "?")
                for what in seen:
                    by_type[kind, what] += 1
    return {"pages": pages, "by_type": by_type, "by_object": by_object}


def run(pod: int) -> None:
    from integration.harness.containerd import Containerd
    from integration.harness.ctr import Ctr
    from integration.harness.image import IMAGE_NAME, build_busybox_image

    containerd = Containerd(Path(tempfile.mkdtemp(prefix="pyoci-bench-pages-", dir="/tmp")))
    containerd.start()
    dump = str(containerd.base / "objects.marshal")
    template = None
    try:
        ctr = Ctr(containerd.address, "pages", containerd.env())
        ctr("images", "import", str(build_busybox_image(containerd.base / "busybox.tar")))
        ctr("run", "--rm", "--runtime", PYOCI, IMAGE_NAME, "warm", "true")
        deadline = time.monotonic() + 20
        while not containerd.template_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in containerd.template_pids():
            os.kill(pid, signal.SIGTERM)
        while containerd.template_pids():
            time.sleep(0.05)
        argv = ["-address", containerd.address, "zygote", " " * 512]
        template = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.shim_pages", "--template", dump, *argv],
            env={**containerd.env(), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            cwd="/",
        )
        while not os.path.exists(dump):
            if template.poll() is not None:
                raise RuntimeError("the instrumented template exited")
            time.sleep(0.1)
        annotations = ["--annotation", "io.containerd.runc.v2.group=pages-pod"] if pod > 1 else []
        ids = [f"pages-{i}" for i in range(pod)]
        for cid in ids:
            ctr("run", "-d", "--runtime", PYOCI, *annotations, IMAGE_NAME, cid, "sleep", "1000")
        time.sleep(1)
        (shim,) = containerd.shim_pids()
        os.kill(shim, signal.SIGUSR1)
        time.sleep(0.3)
        print("imported by the shim after the fork:", Path(dump + ".imports").read_text().split() or "nothing")
        result = compare(template.pid, shim, marshal.loads(Path(dump).read_bytes()))
        print("pages (4 kB) by mapping and state:")
        for key, n in sorted(result["pages"].items()):
            print(f"  {key[0]:10} {key[1]:12} {n:6} ({n * 4} kB)")
        print("copied pages with a changed word of (a page counts once per kind of word):")
        for key, n in result["by_type"].most_common(30):
            print(f"  {key[0]:10} {key[1]:30} {n:6}")
        print("objects with the most changed words:")
        for key, n in result["by_object"].most_common(30):
            print(f"  {n:6}  {key[0]} {key[1]}")
        ctr.remove(*ids)
    finally:
        containerd.stop()
        if template is not None and template.poll() is None:
            template.send_signal(signal.SIGTERM)
            template.wait(10)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--template":
        return _template(sys.argv[3:], sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pod", type=int, default=1, help="containers in one shim (grouped); 1: a shim of its own")
    run(parser.parse_args().pod)
    return 0


if __name__ == "__main__":
    sys.exit(main())
