"""The bytes model (llama-3.1-8b int4 vs bf16) and the CPU timing ratio."""

from __future__ import annotations

import json

from models.presets import preset_config
from models.quantization.bench import cpu_matmul_ratio, linear_shapes, main, param_bytes_report


def test_llama_8b_param_bytes():
    cfg = preset_config("llama-3.1-8b")
    r = param_bytes_report(cfg)
    weights = cfg.num_layers * sum(k * n for _, k, n in linear_shapes(cfg))
    # int4: half a byte a weight, plus one bf16 scale per 128 weights (and an int8 zero point)
    assert r["linear_int4_sym_bytes"] == weights // 2 + weights // 128 * 2
    assert r["linear_int4_asym_bytes"] == r["linear_int4_sym_bytes"] + weights // 128
    assert 0.25 < r["linear_ratio_sym"] < 0.26
    assert r["total_bf16_bytes"] == 2 * cfg.num_params()
    assert 0.35 < r["total_ratio"] < 0.36 and 0.30 < r["total_ratio_with_int4_head"] < 0.31
    saved = r["total_bf16_bytes"] - r["total_int4_bytes"]
    assert r["kv_bytes_per_block"] == 16 * 2 * 32 * 8 * 128 * 2  # 2 MiB
    assert r["kv_blocks_gained"] == saved // r["kv_bytes_per_block"] > 4000


def test_cpu_timing_and_cli(tmp_path, capsys):
    t = cpu_matmul_ratio(4, 256, 128, repeats=2)
    assert t["int4_dequant_matmul_ms"] > 0 and t["bf16_matmul_ms"] > 0 and t["backend"] == "cpu"
    out = tmp_path / "q.json"
    assert main(["--preset", "llama-3.2-1b", "--layer", "k_proj", "--repeats", "1",
                 "--output-json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cpu_timing"]["shape"] == [16, 2048, 512] and report["param_bytes"]["total_ratio"] < 0.5
    assert "KV blocks gained" in capsys.readouterr().out
