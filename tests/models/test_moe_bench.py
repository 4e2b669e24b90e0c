"""benchmarks/moe_bench.py runs end to end (tiny shapes) and its figures hold together: the routed
MoE's FLOPs (XLA's cost analysis, loops counted per work item) match the analytic count and
are a fraction of the dense all-experts compute's, with the same outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "moe_bench.py"


def test_moe_bench_smoke(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("moe_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "moe_bench", bench)  # dataclasses look it up
    spec.loader.exec_module(bench)
    out = tmp_path / "moe.json"

    assert bench.main(["--smoke", "--output-json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["smoke"] and report["jax_version"] and report["device"] and "git" in report
    experts = report["shape"]["num_experts"]
    assert [(r["tokens"], r["top_k"]) for r in report["results"]] == [(8, 2), (32, 2)]
    for r in report["results"]:
        tiled, dense, ragged = (r["impls"][k] for k in ("tiled", "dense", "ragged_dot"))
        assert sum(r["group_sizes"]) == r["tokens"] * r["top_k"]
        assert tiled["work_items"] >= len([n for n in r["group_sizes"] if n])
        # the analytic counts are the matmuls'; at these tiny widths the elementwise work (activations,
        # softmax, weighting) adds ~8% (under 1% at the full benchmark's)
        assert 1 <= tiled["hlo_flops"] / tiled["analytic_flops"] < 1.15, tiled
        assert 1 <= dense["hlo_flops"] / r["analytic_dense_flops"] < 1.15, dense
        assert tiled["hlo_flops_loops_once"] < tiled["hlo_flops"] < dense["hlo_flops"] / 1.5
        assert ragged["hlo_flops"] > dense["hlo_flops"]  # jax 0.10.2 ragged_dot: dense, [E, T*k, H] rows
        assert r["ideal_ratio"] == experts / r["top_k"]
        assert r["max_abs_diff_tiled_vs_dense"] < 1e-5 and r["max_abs_diff_ragged_dot_vs_dense"] < 1e-5
        assert min(tiled["ms"], dense["ms"], ragged["ms"]) > 0
    assert "dense/tiled" in capsys.readouterr().out
