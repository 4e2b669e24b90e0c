"""A split run (as the GPU plan does it): our engine in one part, a baseline on a subset in another."""

from __future__ import annotations

import json

import pytest

from pagedjax.bench.combine import combine
from pagedjax.bench.common import RATE_KEYS
from pagedjax.bench.report import format_table
from pagedjax.bench.throughput import ThroughputConfig, run_throughput


def test_engine_part_and_baseline_part_combine(llama_dir):
    common = dict(model=llama_dir, num_prompts=6, input_len=20, output_len=5, baseline_num_prompts=4,
                  roofline_batches=())
    engine = run_throughput(ThroughputConfig(**common, baselines=()))
    static = run_throughput(ThroughputConfig(**common, baselines=("jax-static",), run_engine=False,
                                             static_batch_size=2))
    assert engine["num_requests"] == 6 and engine["baselines"] == {} and engine["ratios"] == {}
    subset = engine["ours_on_baseline_subset"]
    assert subset["num_requests"] == 4 and subset["output_tokens"] == 20
    assert subset["prefix_cache_hit_tokens"] == 0  # the rerun of the same prompts recomputed them
    assert static["requests_per_s"] is None and static["ratios"] == {}  # no engine in this part
    base = static["baselines"]["jax-static"]
    assert base["num_requests"] == 4 and base["num_batches"] == 2 and base["workload_fingerprint"] == \
        subset["workload_fingerprint"]
    merged = combine([json.loads(json.dumps(engine)), static])  # parts go through JSON files
    for key in RATE_KEYS:
        assert merged["ratios"]["jax-static"][key] == pytest.approx(subset[key] / base[key])
    assert "jax-static" in format_table(merged)
