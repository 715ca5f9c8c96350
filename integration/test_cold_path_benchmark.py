"""benchmarks/cold_path.py runs end to end on this venv: every command it times succeeds and leaves nothing."""

import json
from pathlib import Path

from benchmarks import cold_path


def test_one_round_times_every_command_and_leaves_no_cgroup(tmp_path, capsys):
    out = tmp_path / "samples.json"
    assert cold_path.main(["--runs", "1", "--json", str(out)]) == 0
    samples = json.loads(out.read_text())["this"]
    assert set(samples) == {
        "pyoci --version",
        "pyoci state (missing)",
        "pyoci create",
        "pyoci state (created)",
        "pyoci start",
        "pyoci delete",
        "create + start + delete",
        "python -c pass",
        "shim template imports",
    }
    assert all(len(v) == 1 and v[0][0] > 0 and v[0][1] > 0 for v in samples.values())
    assert "shim template imports" in capsys.readouterr().out
    leftovers = [p for p in Path("/sys/fs/cgroup").glob("*/pyoci-it-runtime/cold-path")]
    assert leftovers == []
