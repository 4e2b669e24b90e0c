"""`pagedjax bench throughput` end to end on the CPU: all baselines, the JSON, the ratios, the plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pagedjax.bench.common import RATE_KEYS


@pytest.fixture(scope="module")
def report(llama_dir, tmp_path_factory):
    """One small CLI run of the tiny float32 Llama with every baseline (kept small: 2 CPU cores)."""
    out = tmp_path_factory.mktemp("bench") / "cpu-tiny.json"
    args = ["bench", "throughput", "--model", llama_dir, "--num-prompts", "10", "--input-len", "12",
            "--output-len", "6", "--baselines", "all", "--hf-batch-size", "4", "--roofline-batches", "2,4",
            "--roofline-context", "16", "--roofline-steps", "3", "--copy-mib", "8", "--output-json", str(out),
            "--plot"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "pagedjax", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    return res, out


def _load(report):
    res, out = report
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional: without matplotlib the run must say how to get it
        assert res.returncode == 2 and "pip install matplotlib" in res.stderr
        assert out.exists()  # the JSON is written before the plot
    else:
        assert res.returncode == 0, res.stderr[-3000:]
        assert out.with_suffix(".png").stat().st_size > 1000
    return res, json.loads(out.read_text())


def test_json_fields_and_positive_figures(report):
    res, r = _load(report)
    assert r["benchmark"] == "throughput"
    assert r["device"]["platform"] == "cpu" and r["device"]["device_kind"]
    assert r["jax_version"] and "commit" in r["git"]
    w = r["workload"]
    assert (w["num_prompts"], w["kind"], w["total_prompt_tokens"], w["total_output_tokens"]) == (10, "fixed", 120, 60)
    assert w["seed"] == 0 and len(w["fingerprint"]) == 64
    assert r["engine_config"]["max_model_len"] == 256 and r["engine_config"]["block_size"] == 16
    for key in RATE_KEYS + ("elapsed_s",):
        assert r[key] > 0
    assert r["output_tokens"] == 60 and r["num_requests"] == 10
    assert r["total_tokens_per_s"] == pytest.approx(180 / r["elapsed_s"])
    assert r["timing"]["excluded"] and r["timing"]["warmup"]["seconds"] > 0
    assert set(r["baselines"]) == {"hf-generate", "hf-continuous", "jax-static"}
    for name, base in r["baselines"].items():
        assert "error" not in base, (name, base)
        for key in RATE_KEYS + ("elapsed_s",):
            assert base[key] > 0, (name, key)
        assert base["output_tokens"] == 60 and base["workload_fingerprint"] == w["fingerprint"]
    assert "pagedjax" in res.stdout and "hf-continuous" in res.stdout  # the table


def test_ratios_are_ours_over_each_baseline(report):
    _, r = _load(report)
    assert set(r["ratios"]) == set(r["baselines"])
    for name, ratio in r["ratios"].items():
        for key in RATE_KEYS:
            assert ratio[key] == pytest.approx(r[key] / r["baselines"][name][key], rel=1e-9)


def test_same_weights_and_requests_give_the_same_greedy_tokens(report):
    # float32, the same checkpoint and prompts: every system must produce our tokens exactly
    _, r = _load(report)
    for name, base in r["baselines"].items():
        assert base["agreement_with_ours"] == {"exact": 1.0, "first_token": 1.0, "prefix": 1.0}, name


def test_kv_and_roofline_figures(report):
    _, r = _load(report)
    kv = r["kv_memory"]
    # 10 sequences of at most 18 tokens in blocks of 16: the paged pool wastes well under half,
    # a max_model_len=256 reservation per sequence wastes over 90%
    assert 0 <= kv["paged_waste"] < 0.5 < 0.9 < kv["contiguous_waste"] < 1
    assert kv["num_steps_sampled"] == r["num_steps"] and kv["max_running"] == 10
    roof = r["roofline"]
    assert roof["copy_bandwidth"]["bytes_per_s"] > 0
    assert [b["batch"] for b in roof["batches"]] == [2, 4]
    for b in roof["batches"]:
        assert b["num_steps"] == 3 and b["floor_s"] > 0 and b["step_s"]["median"] > 0
        assert b["ratio_to_floor"] == pytest.approx(b["step_s"]["median"] / b["floor_s"])
    # a bigger batch reads more K/V, so its floor is higher
    assert roof["batches"][1]["floor_s"] > roof["batches"][0]["floor_s"]
