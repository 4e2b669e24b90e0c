"""`pagedjax bench serve` against the test server: small runs, the JSON's fields, the statistics."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from pagedjax.bench.serve import RequestResult, arrival_intervals, figures
from pagedjax.bench.serve_cli import add_arguments, run
from tests.server.helpers import API_KEY, MODEL

STATS = {"mean", "median", "p90", "p99", "min", "max"}


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arrival_intervals():
    assert arrival_intervals(5, math.inf, 1.0, seed=0) == [0.0] * 5
    gaps = np.array(arrival_intervals(4000, 20.0, 1.0, seed=1))
    assert gaps.mean() == pytest.approx(1 / 20, rel=0.06)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.08)  # exponential: CV 1
    bursty = np.array(arrival_intervals(4000, 20.0, 0.25, seed=1))
    assert bursty.mean() == pytest.approx(1 / 20, rel=0.12) and bursty.std() / bursty.mean() > 1.6  # CV 2
    assert arrival_intervals(3, 2.0, 1.0, seed=7) == arrival_intervals(3, 2.0, 1.0, seed=7)
    with pytest.raises(ValueError):
        arrival_intervals(3, 0.0, 1.0, seed=0)


def test_figures_follow_vllm_definitions():
    results = [RequestResult(10, 5, output_len=5, ttft=0.1, itl=[0.05] * 4, latency=0.3),
               RequestResult(20, 3, output_len=3, ttft=0.2, itl=[0.1, 0.3], latency=0.6),
               RequestResult(30, 4, error="HTTP 500: boom")]
    f = figures(results, duration=2.0)
    assert (f["completed"], f["failed"], f["total_input_tokens"], f["total_output_tokens"]) == (2, 1, 30, 8)
    assert f["request_throughput"] == 1.0 and f["output_throughput"] == 4.0 and f["total_token_throughput"] == 19.0
    assert f["tpot_ms"]["mean"] == pytest.approx(1000 * (0.05 + 0.2) / 2)  # (latency - ttft) / (out - 1)
    assert f["itl_ms"]["max"] == pytest.approx(300.0) and f["itl_ms"]["median"] == pytest.approx(50.0)
    assert f["ttft_ms"]["mean"] == pytest.approx(150.0) and f["e2el_ms"]["p99"] == pytest.approx(597.0)
    assert f["errors"] == ["HTTP 500: boom"]


@pytest.mark.parametrize("rate,extra", [("inf", ()), ("8", ("--max-concurrency", "6", "--burstiness", "0.5"))])
def test_bench_serve_small_run(server, tmp_path, capsys, rate, extra):
    out = tmp_path / "serve.json"
    args = bench_args("--base-url", server.url, "--api-key", API_KEY, "--num-prompts", "16", "--input-len", "24",
                      "--output-len", "12", "--request-rate", rate, "--seed", "3", "--output-json", str(out), *extra)
    assert run(args) == 0
    table = capsys.readouterr().out
    assert "Serving Benchmark Result" in table and "Mean TTFT (ms):" in table and "P99 ITL (ms):" in table
    result = json.loads(out.read_text())
    f = result["figures"]
    print(json.dumps({k: f[k] for k in ("duration_s", "request_throughput", "output_throughput", "ttft_ms",
                                        "tpot_ms", "itl_ms", "e2el_ms")}, indent=1))
    assert (f["completed"], f["failed"], f["output_len_mismatches"]) == (16, 0, 0)
    assert f["total_input_tokens"] == 16 * 24 and f["total_output_tokens"] == 16 * 12
    assert f["request_throughput"] == pytest.approx(16 / f["duration_s"])
    assert f["output_throughput"] == pytest.approx(16 * 12 / f["duration_s"])
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        assert set(f[key]) == STATS and 0 < f[key]["min"] <= f[key]["median"] <= f[key]["p99"] <= f[key]["max"]
    assert f["e2el_ms"]["min"] > f["ttft_ms"]["min"]
    assert result["request_rate"] == (rate if rate == "inf" else float(rate))
    assert result["workload"]["kind"] == "fixed" and result["workload"]["num_prompts"] == 16
    assert result["server"]["model"] == MODEL and result["server"]["device"] == "cpu"
    assert result["server"]["compiles_during_run"] >= 0
    env = result["environment"]
    assert env["jax_version"] and env["device"]["platform"] == "cpu" and "commit" in env["git"]
    assert len(result["per_request"]["ttfts_s"]) == 16 and not any(result["per_request"]["errors"])


def test_bench_serve_synthetic_sharegpt(server, tmp_path):
    out = tmp_path / "sharegpt.json"
    args = bench_args("--base-url", server.url, "--api-key", API_KEY, "--dataset", "synthetic-sharegpt",
                      "--num-prompts", "8", "--request-rate", "inf", "--output-json", str(out))
    assert run(args) == 0
    result = json.loads(out.read_text())
    lens = [i + o for i, o in zip(result["per_request"]["input_lens"], result["per_request"]["output_lens"])]
    assert result["workload"]["kind"] == "synthetic-sharegpt" and max(lens) <= 128  # fits the server's context
    assert result["figures"]["completed"] == 8 and result["figures"]["output_len_mismatches"] == 0


def test_pagedjax_bench_serve_starts_its_own_server(llama_dir, tmp_path, capsys):
    from pagedjax.cli import main

    out = tmp_path / "own.json"
    status = main(["bench", "serve", "--model", llama_dir, "--num-prompts", "6", "--input-len", "8",
                   "--output-len", "5", "--num-warmups", "2", "--max-model-len", "64", "--num-kv-blocks", "16",
                   "--max-num-seqs", "8", "--max-num-batched-tokens", "64", "--precompile", "--output-json", str(out)])
    assert status == 0 and "Serving Benchmark Result" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["server"]["in_process"] and result["server"]["max_model_len"] == 64
    assert result["server"]["root"] == llama_dir and result["num_warmups"] == 2
    assert result["figures"]["completed"] == 6 and result["figures"]["total_output_tokens"] == 30
    assert result["server"]["compiles_during_run"] == 0  # --precompile compiled every shape the run uses
