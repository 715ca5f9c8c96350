"""benchmarks/compare.py's reporting: summaries, the table, the ratios, the chart (or its clear skip)."""

from __future__ import annotations

import builtins
import os

from benchmarks import compare
from benchmarks.shim_memory import smaps_breakdown


def _results() -> dict:
    r = {"date": "2026-11-29 01:00", "runs": 3, "interpreter": {}}
    r["ctr_run_rm_true"] = compare.summary([0.10, 0.12, 0.11], [0.09, 0.10, 0.11])
    r["parallel_run_d_20"] = {"pyoci_s": 2.0, "pyoci_failed": 0, "runc_s": 1.6, "runc_failed": 1}
    r["parallel_run_d_100"] = {"pyoci_s": 9.0, "pyoci_failed": 2, "runc_s": 10.0, "runc_failed": 0}
    memory = {}
    for kind in ("one_each", "grouped"):
        memory[f"pyoci_{kind}_pss_kb_per_container"] = 2048
        memory[f"pyoci_{kind}_pss_kb_per_container_with_template"] = 3072
        memory[f"pyoci_{kind}_uss_kb_per_container"] = 1024
        memory[f"runc_{kind}_pss_kb_per_container"] = 2048
        memory[f"runc_{kind}_uss_kb_per_container"] = 2048
    r["memory"] = memory
    return r


def test_summary_is_medians_min_max_and_ratio():
    s = compare.summary([0.1, 0.3, 0.2], [0.1, 0.1, 0.2])
    assert s == {
        "pyoci_ms": 200.0,
        "runc_ms": 100.0,
        "ratio": 2.0,
        "pyoci_min_max_ms": [100.0, 300.0],
        "runc_min_max_ms": [100.0, 200.0],
    }


def test_table_has_a_row_per_measure_with_failures_and_memory():
    text = compare.table(_results())
    assert "| `ctr run --rm busybox true`, warm | 110.0 ms (100.0-120.0) | 100.0 ms (90.0-110.0) | 1.1 |" in text
    assert "| 20 parallel `ctr run -d` until RUNNING (failed) | 2.0 s (0) | 1.6 s (1) | 1.25 |" in text
    assert "| 100 parallel `ctr run -d` until RUNNING (failed) | 9.0 s (2) | 10.0 s (0) | 0.9 |" in text
    assert "| shim PSS per container, one shim each (+ template share) | 2.00 MB (3.00 MB) | 2.00 MB | 1.50 |" in text
    assert "| shim USS per container, 10 in one shim (pod) | 1.00 MB | 2.00 MB | 0.50 |" in text


def test_ratios_for_the_chart():
    assert compare.ratios(_results()) == {
        "run --rm warm": 1.1,
        "20 parallel": 1.25,
        "100 parallel": 0.9,
        "PSS one each": 1.5,
        "PSS pod of 10": 1.5,
    }


def test_chart_is_skipped_clearly_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = compare.chart(_results(), str(tmp_path / "c.png"))
    assert out.startswith("chart skipped: matplotlib is not installed") and not (tmp_path / "c.png").exists()


def test_smaps_breakdown_of_this_process():
    r = smaps_breakdown(os.getpid())
    assert r["pss"] > 0 and r["uss"] > 0
    assert sum(v for k, v in r.items() if k.startswith("dirty_")) <= r["uss"]
