"""`pagedjax bench compile`: a tiny preset's engine step buckets compiled for sm_90 on this CPU
machine (deviceless: jax-cuda12-plugin + ptxas from the test extra), with per-bucket reports."""

from __future__ import annotations

import json

import pytest

from models.presets import PRESETS
from pagedjax.bench.compile_target import CompileConfig, format_compile_table, run_compile
from pagedjax.cli import main

TINY = {"architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16"}


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny-compile-llama", TINY)
    return "tiny-compile-llama"


def test_cli_compiles_buckets_for_h100_and_reports_kernels(tiny_preset, tmp_path, capsys):
    out = tmp_path / "compile.json"
    assert main(["bench", "compile", "--model", tiny_preset, "--target", "h100", "--kv-cache-dtype", "fp8",
                 "--max-num-seqs", "8", "--max-num-batched-tokens", "32", "--max-model-len", "256",
                 "--max-buckets", "2", "--output-json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["target"] == "h100" and report["config"]["kv_cache_dtype"] == "fp8"
    assert len(report["buckets"]) == 2 <= report["total_buckets"]
    # 80 GB * 0.9 of an fp8 pool: 2 layers * 2 * 2 heads * 16 * 32 bytes per block
    assert report["kv_bytes_per_block"] == 2 * 2 * 2 * 16 * 32
    assert report["num_kv_blocks"] == int((80e9 * 0.9 - report["param_bytes"]) // report["kv_bytes_per_block"])
    kinds = {r["decode_only"] for r in report["buckets"]}
    assert kinds == {True, False}, report["buckets"]  # the decode kernel and the ragged one
    for row in report["buckets"]:
        assert 0 < row["temp_bytes"] < report["kv_pool_bytes"] // 100  # the donated pool is updated in place
        pallas = [k for k in row["kernels"] if k["pallas"]]
        assert pallas and all(k["launches"] == 2 for k in pallas)  # one per layer
        for k in pallas:
            assert 0 < k["registers"] <= 255 and k["spill_store_bytes"] == 0
            assert k["threads_per_block"] <= 1024 and k["shared_memory_bytes"] <= 232448
    printed = capsys.readouterr().out
    assert printed.startswith(format_compile_table(report)) and "paged_attention" in printed


def test_config_validation(tiny_preset):
    for bad in (dict(target="a100"), dict(dtype="int8"), dict(kv_cache_dtype="fp4"), dict(max_buckets=0),
                dict(gpu_memory_utilization=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CompileConfig(model=tiny_preset, **bad)
    with pytest.raises(ValueError, match="unknown preset"):
        run_compile(CompileConfig(model="no-such-preset"))
