"""The bytes table (llama-3.1-8b int4 / int8 vs bf16, counted from the abstract model, against
the bytes re-derived here from the layer shapes), the matmul timing rows, and the command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from models.presets import PRESETS, preset_config
from models.quantization.bench import SCHEMES, TIMED_SCHEMES, matmul_timing, param_bytes_table

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "quant_bench.py"
GIB = 2**30


def _linear_weights(cfg) -> int:
    """Weights of the decoder layers' linear layers (Llama: q, k, v, o, gate, up, down)."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = h * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * h * i
    return cfg.num_layers * per_layer


def test_llama_8b_param_bytes_and_kv_blocks_gained():
    cfg = preset_config("llama-3.1-8b")
    names = ["bf16", "gptq-int4-g128-sym", "awq-int4-g128", "gptq-int4-g128-sym+lm_head", "int8-channel (on load)"]
    schemes = [next(s for s in SCHEMES if s.name == n) for n in names]
    rows = {r["scheme"]: r for r in param_bytes_table(PRESETS["llama-3.1-8b"], schemes, memory_bytes=80 * GIB)}
    weights, embed = _linear_weights(cfg), cfg.vocab_size * cfg.hidden_size
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    assert rows["bf16"]["param_bytes"] == 2 * cfg.num_params() == 2 * (weights + 2 * embed + norms)
    # int4: half a byte a weight and a float16 scale per 128 of them (AWQ: an int8 zero point too)
    int4 = weights // 2 + weights // 128 * 2
    floats = 2 * (2 * embed + norms)
    assert rows["gptq-int4-g128-sym"]["param_bytes"] == int4 + floats
    assert rows["awq-int4-g128"]["param_bytes"] == int4 + weights // 128 + floats
    head = embed // 2 + embed // 128 * 2
    assert rows["gptq-int4-g128-sym+lm_head"]["param_bytes"] == int4 + head + 2 * (embed + norms)
    out_channels = cfg.num_layers * (cfg.num_heads * cfg.head_dim + 2 * cfg.num_kv_heads * cfg.head_dim
                                     + 2 * cfg.hidden_size + 2 * cfg.intermediate_size)
    assert rows["int8-channel (on load)"]["param_bytes"] == weights + 4 * out_channels + floats  # f32 scales
    assert 0.35 < rows["gptq-int4-g128-sym"]["ratio_to_bf16"] < 0.36
    assert 0.30 < rows["gptq-int4-g128-sym+lm_head"]["ratio_to_bf16"] < 0.31
    per_block = 16 * 2 * 32 * 8 * 128 * 2  # tokens x (K, V) x layers x kv heads x head_dim x bf16: 2 MiB
    budget = int(0.9 * 80 * GIB)
    for row in rows.values():
        assert row["kv_bytes_per_block"] == per_block
        assert row["kv_blocks"] == (budget - row["param_bytes"]) // per_block
        assert row["kv_blocks_gained"] == row["kv_blocks"] - rows["bf16"]["kv_blocks"]
    saved = rows["bf16"]["param_bytes"] - rows["gptq-int4-g128-sym"]["param_bytes"]
    assert abs(rows["gptq-int4-g128-sym"]["kv_blocks_gained"] - saved // per_block) <= 1
    assert rows["gptq-int4-g128-sym"]["kv_blocks_gained"] > 4900  # ~9.6 GiB: ~79k more tokens of KV


def test_matmul_timing_rows_for_each_scheme_and_backend():
    rows = matmul_timing(4, 256, 128, list(TIMED_SCHEMES), ["reference"], repeats=1)
    rows += matmul_timing(4, 256, 128, ["int4-g128-asym"], ["reference", "pallas_interpret"], repeats=1)
    assert [(r["scheme"], r["backend"]) for r in rows] == [(s, "reference") for s in TIMED_SCHEMES] + [
        ("int4-g128-asym", "reference"), ("int4-g128-asym", "pallas_interpret")]
    for r in rows:
        assert r["shape"] == [4, 256, 128] and r["ms"] > 0 and r["bf16_matmul_ms"] > 0
        assert r["time_ratio_to_bf16"] == pytest.approx(r["ms"] / r["bf16_matmul_ms"])
        assert r["weight_bytes"] < r["bf16_weight_bytes"] == 256 * 128 * 2


TINY = dict(PRESETS["llama-3.1-8b"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=512)


def test_command_line_prints_both_tables_and_writes_json(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("quant_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quant_bench", bench)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(PRESETS, "tiny-llama", TINY)
    out = tmp_path / "q.json"
    assert bench.main(["--preset", "tiny-llama", "--memory-gib", "0.01", "--kv-cache-dtype", "int8",
                       "--tokens", "8", "--layers", "k_proj",
                       "--schemes", "int4-g128-sym,fp8-block128-w8a8", "--repeats", "1",
                       "--output-json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["preset"] == "tiny-llama" and report["jax_version"] and "git" in report
    assert [r["scheme"] for r in report["param_bytes"]] == [s.name for s in SCHEMES]
    # int8 K/V: 16 tokens x (K, V) x 2 layers x 2 kv heads x 64 bytes, and a bf16 scale per token and head
    per_block = 16 * 2 * 2 * 2 * 64 + 16 * 2 * 2 * 2 * 2
    budget = int(0.9 * 0.01 * GIB)
    assert all(r["kv_bytes_per_block"] == per_block and r["kv_blocks"] == (budget - r["param_bytes"]) // per_block
               for r in report["param_bytes"])
    assert [(r["scheme"], r["shape"]) for r in report["matmul_timing"]] == [
        ("int4-g128-sym", [8, 256, 128]), ("fp8-block128-w8a8", [8, 256, 128])]
    printed = capsys.readouterr().out
    assert "KV blocks" in printed and "gptq-int4-g128-sym" in printed and "fp8-block128-w8a8" in printed
    with pytest.raises(SystemExit):
        bench.main(["--schemes", "int3"])
