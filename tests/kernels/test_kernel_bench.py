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
    assert [r["kind"] for r in report["results"]] == ["decode", "ragged", "decode"]
    windowed = report["results"][2]
    assert windowed["sliding_window"] == 16 and windowed["kv_cache_dtype"] == "int8"
    # bytes model: each sequence reads its last 16 keys, 2 heads x (128 int8 + a bf16 scale) x K, V
    assert windowed["kv_bytes"] == 2 * 16 * 2 * 2 * (128 + 2)
    for r in report["results"]:
        assert "error" not in r, r
        assert r["best_ms"] > 0 and r["reference_ms"] > 0 and r["best_gbps"] > 0
        assert r["max_abs_err_vs_reference"] < 0.05  # bf16
        assert len(r["trials"]) == 2 and all("ms" in t for t in r["trials"])
    out_text = capsys.readouterr().out
    assert "decode-b2-ctx40" in out_text and "windowed decode, bytes model" in out_text
    rows = {(r["kv_cache_dtype"], r["window"]): r for r in report["windowed_decode_bytes"]}
    full = rows[("auto", None)]["kv_bytes"]
    assert rows[("auto", 4096)]["kv_bytes"] == full * 4096 // 32768  # cost follows the window
    assert rows[("fp8", 1024)]["kv_bytes"] == full * 1024 // 32768 // 2
    assert rows[("fp8", None)]["fraction_of_full_context"] == 0.5
    accuracy = {r["kv_cache_dtype"]: r for r in report["kv_cache_accuracy"]}
    assert accuracy["auto"]["max_abs_err"] < accuracy["int8"]["max_abs_err"] < accuracy["fp8"]["max_abs_err"]
    assert accuracy["fp8"]["mean_abs_err"] < 0.02 and accuracy["int8"]["mean_abs_err"] < 0.005
