"""``./dev demo``: a private containerd, the offline busybox image, one container run through pyoci.

Usage: python -m integration.demo [RUNTIME]   (default io.containerd.pyoci.v2)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from integration.harness.containerd import Containerd
from integration.harness.ctr import Ctr
from integration.harness.image import build_busybox_image


def main(argv: list[str]) -> int:
    runtime = argv[0] if argv else "io.containerd.pyoci.v2"
    daemon = Containerd(Path(tempfile.mkdtemp(prefix="pyoci-demo-", dir="/tmp")))
    daemon.start()
    try:
        ctr = Ctr(daemon.address, "pyoci-demo", daemon.env())
        ctr("images", "import", str(build_busybox_image(daemon.base / "busybox.tar")))
        argv = ["run", "--rm", "--runtime", runtime, "docker.io/pyoci/busybox:latest", "demo"]
        print("$ ctr " + " ".join(argv) + " sh -c 'echo hello from $(hostname); id; grep ^Cap /proc/self/status'")
        result = ctr(*argv, "sh", "-c", "echo hello from $(hostname); id; grep ^Cap /proc/self/status", check=False)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    finally:
        for leftover in daemon.stop():
            print(f"demo: cleaned up {leftover}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
