"""benchmarks/kernel_bench.py runs end to end (tiny shapes, interpret mode) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_bench.py"


def test_kernel_bench_smoke(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("kernel_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernel_bench", bench)  # dataclasses look it up
    spec.loader.exec_module(bench)
    out = tmp_path / "kernels.json"

    assert bench.main(["--smoke", "--output-json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["smoke"] and report["jax_version"] and report["device"]
    assert "commit" in report and report["copy_bandwidth_gbps"] > 0
    assert [r["kind"] for r in report["results"]] == ["decode", "ragged"]
    for r in report["results"]:
        assert "error" not in r, r
        assert r["best_ms"] > 0 and r["reference_ms"] > 0 and r["best_gbps"] > 0
        assert r["max_abs_err_vs_reference"] < 0.05  # bf16
        assert len(r["trials"]) == 2 and all("ms" in t for t in r["trials"])
    assert "decode-b2-ctx40" in capsys.readouterr().out
