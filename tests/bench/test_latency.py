"""`pagedjax bench latency` on the CPU, tiny: the JSON's fields and their consistency."""

from __future__ import annotations

import json

import pytest

from pagedjax.bench.cli import add_bench_parser
from pagedjax.cli import main


def test_latency_cli_tiny(llama_dir, tmp_path, capsys):
    out = tmp_path / "latency.json"
    rc = main(["bench", "latency", "--model", llama_dir, "--batch-size", "3", "--input-len", "10", "--output-len", "5",
               "--num-iters-warmup", "1", "--num-iters", "2", "--roofline-batches", "2", "--roofline-context", "8",
               "--copy-mib", "8", "--output-json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["benchmark"] == "latency" and r["device"]["platform"] == "cpu"
    assert r["workload"]["batch_size"] == 3 and r["workload"]["num_iters"] == 2
    lat, ttft, step = r["latency_s"], r["ttft_s"], r["decode_step_s"]
    assert 0 < ttft["min"] <= ttft["max"] < lat["min"]  # the prefill ends before the batch does
    assert 0 < step["median"] < lat["median"]
    assert r["ttft_mean_per_request_s"]["max"] <= ttft["max"] + 1e-9
    # 5 output tokens: the prefill step samples the first, 4 decode steps the rest, per iteration
    assert r["roofline"]["own_batch"]["num_steps"] == 2 * 4
    assert r["output_tokens_per_s"] == pytest.approx(15 / lat["mean"])
    assert r["timing"]["compile_s_in_timed_iters"] == 0.0  # the warm-up iteration compiled every shape
    own = r["roofline"]["own_batch"]
    assert own["floor_s"] > 0 and own["ratio_to_floor"] == pytest.approx(own["step_s"]["median"] / own["floor_s"])
    assert [b["batch"] for b in r["roofline"]["batches"]] == [2]
    assert "time to first token" in capsys.readouterr().out


def test_bench_parser_rejects_unknown_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "nonsense"])
    args = parser.parse_args(["bench", "throughput", "--roofline-batches", "none", "--baselines", "hf-generate"])
    assert args.roofline_batches == () and args.baselines == "hf-generate"
