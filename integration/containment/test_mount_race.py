"""Attack: racing a mount destination out of the rootfs (CVE-2021-30465 class).

Container A shares a volume with container B. B's config mounts the volume at /shared, a tmpfs at
/shared/d/mnt and a device node at /shared/d/evil. In A, ``attackers/swapper.c`` swaps the volume's
``d`` (a directory) and ``s`` (a symlink to a host directory, absolute) with renameat2(RENAME_EXCHANGE)
as fast as it can, while B is created 30 times. A runtime that resolves the destination and then mounts
by path follows the swapped-in symlink: the tmpfs lands on the host directory (seen by a createRuntime
hook in B's mount namespace), its mount point and the device node are created there. pyoci resolves
every destination with openat2(RESOLVE_IN_ROOT) and mounts on the fd: the host directory must stay
empty and unmounted in every round (a create that loses the race fails with one clear line instead).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from integration.containment.attackers import build
from integration.harness.bundle import make_bundle

ROUNDS = 30
HOOK = """
import json, sys
state = json.load(sys.stdin)
escape, report = sys.argv[1], sys.argv[2]
with open(f"/proc/{state['pid']}/mountinfo") as f:
    outside = [line.split()[4] for line in f if (line.split()[4] + "/").startswith(escape + "/")]
with open(report, "a") as f:
    f.write(json.dumps(outside) + "\\n")
"""


def test_mount_destinations_cannot_be_raced_out_of_the_rootfs(bundle):
    base = Path(tempfile.mkdtemp(prefix="pyoci-race-", dir="/tmp"))
    os.chmod(base, 0o755)
    volume, escape, report = base / "volume", base / "escape", base / "report"
    volume.mkdir()
    escape.mkdir()
    (volume / "d" / "mnt").mkdir(parents=True)
    (volume / "s").symlink_to(escape)
    attacker = make_bundle(base / "attacker", f"{bundle.id}-a"[:60], ["/swapper", "/vol/d", "/vol/s", "/vol/stop"])
    attacker.config["mounts"] += [
        {"destination": "/swapper", "type": "bind", "source": str(build("swapper")), "options": ["rbind", "ro"]},
        {"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]},
    ]
    attacker.write()
    bundle.config["mounts"] += [
        {"destination": "/shared", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]},
        {"destination": "/shared/d/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
    ]
    bundle.config["linux"]["devices"] = [
        {"path": "/shared/d/evil", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 0, "gid": 0}
    ]
    bundle.config["hooks"] = {
        "createRuntime": [{"path": sys.executable, "args": ["python", "-c", HOOK, str(escape), str(report)]}]
    }
    bundle.write()
    failures = []
    try:
        attacker.pyoci("run", "-d", "--bundle", str(attacker.path), attacker.id, check=True)
        for _ in range(ROUNDS):
            result = bundle.pyoci("create", "--bundle", str(bundle.path), bundle.id)
            if result.returncode:
                failures.append(result.stderr.strip())
            bundle.pyoci("delete", "--force", bundle.id, check=True)
            assert not list(escape.iterdir()), f"written outside the rootfs: {list(escape.iterdir())}"
        mounted = [json.loads(line) for line in report.read_text().splitlines()]
        assert not any(mounted), f"mounted outside the rootfs: {[m for m in mounted if m]}"
        # Losing the race may fail a create (the destination vanished under it), but only with one clear line
        # naming the mount, and most creates must get through the mounts (each reaches the hook that checks)
        assert all(len(f.splitlines()) == 1 and "/shared/d/" in f for f in failures), failures[:3]
        assert len(failures) <= ROUNDS // 3, f"{len(failures)} of {ROUNDS} creates failed: {failures[:3]}"
        assert len(mounted) == ROUNDS - len(failures)
    finally:
        (volume / "stop").touch()
        attacker.pyoci("delete", "--force", attacker.id)
        leftovers = attacker.leftovers()
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, leftovers
