"""KV cache formats and sliding windows, measured through the engine (`LLM`), side by side in one run.

1. Quantized KV cache (`kv_cache_dtype`): bytes per block and the blocks a fixed byte budget holds,
   against the "auto" (model dtype) pool; accuracy against the "auto" cache: greedy agreement
   (completions equal, and the share of tokens before the first divergence) and the deviation of
   the log-probabilities of the same token sequences (the auto cache's greedy completions, scored
   as prompts with `prompt_logprobs`, so every format sees identical inputs): max and mean |delta|.
2. Sliding window (Mistral v0.1-style, every layer windowed): the most KV blocks a long generation
   holds, against what a full-attention cache of the same lengths holds.

The default model is the built-in trained one (pagedjax.default_model), so greedy continuations
are confident enough for agreement to mean something; `--model DIR` uses another checkpoint.

    PYTHONPATH=$PWD python benchmarks/kv_cache_bench.py --output-json benchmarks/results/kv-cache-cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagedjax import LLM, SamplingParams  # noqa: E402
from pagedjax.bench.common import environment, write_json  # noqa: E402

PROMPTS = ["The module", "Return a new", "The quick brown fox", "If the argument is", "This function",
           "A list of", "The default value", "When the file"]
FORMATS = ("auto", "fp8", "fp8_e5m2", "int8")
ENGINE = dict(max_model_len=512, max_num_seqs=8, max_num_batched_tokens=128, block_size=16, dtype="bfloat16")


def _greedy(llm, prompts, max_tokens):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


def _scored(llm, sequences):
    """log p(token | prefix) of every token after the first, per sequence (prompt_logprobs)."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    outs = llm.generate([{"prompt_token_ids": s} for s in sequences], params, use_tqdm=False)
    return [np.array([entry[t].logprob for entry, t in zip(o.prompt_logprobs[1:], s[1:])])
            for o, s in zip(outs, sequences)]


def quantized_kv(model: str, max_tokens: int, budget_bytes: int) -> list[dict]:
    rows, reference = [], None
    for fmt in FORMATS:
        llm = LLM(model, kv_cache_dtype=fmt, num_kv_blocks=64, **ENGINE)
        prompt_ids = [llm.engine.tokenize(p) for p in PROMPTS]
        outs = _greedy(llm, [{"prompt_token_ids": p} for p in prompt_ids], max_tokens)
        if reference is None:
            sequences = [p + o for p, o in zip(prompt_ids, outs)]
            reference = dict(outs=outs, sequences=sequences, logprobs=_scored(llm, sequences))
        logprobs = _scored(llm, reference["sequences"])
        delta = np.concatenate([np.abs(a - b) for a, b in zip(logprobs, reference["logprobs"])])
        prefix = [next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), len(r)) / len(r)
                  for o, r in zip(outs, reference["outs"])]
        per_block = llm.stats()["kv_bytes_per_block"]
        rows.append(dict(kv_cache_dtype=fmt, bytes_per_block=per_block, blocks_in_budget=budget_bytes // per_block,
                         greedy_equal=sum(o == r for o, r in zip(outs, reference["outs"])) / len(outs),
                         greedy_prefix_share=round(float(np.mean(prefix)), 4),
                         logprob_max_abs_delta=round(float(delta.max()), 5),
                         logprob_mean_abs_delta=round(float(delta.mean()), 6)))
    for row in rows:
        row["blocks_vs_auto"] = round(row["blocks_in_budget"] / rows[0]["blocks_in_budget"], 3)
    return rows


def _windowed_copy(model: str, window: int, out_dir: str) -> str:
    """`model` (a Llama checkpoint) as a Mistral one whose every layer has a `window`-token window."""
    for name in os.listdir(model):
        if os.path.isfile(os.path.join(model, name)):
            shutil.copy(os.path.join(model, name), out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        config = json.load(f)
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=window)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    return out_dir


def sliding_window(model: str, window: int, output_len: int, num_seqs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(_windowed_copy(model, window, tmp), num_kv_blocks=num_seqs * (output_len // 16 + 4),
                  **{**ENGINE, "max_model_len": output_len + 64})
        engine, block = llm.engine, ENGINE["block_size"]
        params = SamplingParams(temperature=0.8, seed=0, max_tokens=output_len, ignore_eos=True)
        prompts = [llm.engine.tokenize(p) for p in PROMPTS[:num_seqs]]
        for i, p in enumerate(prompts):
            engine.add_request(str(i), None, params, prompt_token_ids=p)
        peak = 0
        while engine.has_unfinished_requests():
            engine.step()
            stats = llm.stats()
            peak = max(peak, stats["num_kv_blocks"] - stats["num_free_kv_blocks"])
    full = sum(math.ceil((len(p) + output_len) / block) for p in prompts)
    return dict(window=window, block_size=block, num_seqs=num_seqs, output_len=output_len,
                peak_blocks_windowed=peak, blocks_full_attention=full,
                kv_saved_share=round(1 - peak / full, 4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the built-in trained model)")
    ap.add_argument("--max-tokens", type=int, default=48, help="greedy tokens per prompt for the accuracy rows")
    ap.add_argument("--budget-mib", type=int, default=1024, help="the KV byte budget the block counts are for")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--window-output-len", type=int, default=448)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args(argv)
    if args.model is None:
        from pagedjax.default_model import default_model_dir

        args.model = default_model_dir()
    report = dict(benchmark="kv_cache", model=args.model, environment=environment(),
                  quantized=quantized_kv(args.model, args.max_tokens, args.budget_mib << 20),
                  sliding_window=sliding_window(args.model, args.window, args.window_output_len, 4))
    print(f"{'kv_cache_dtype':>14} {'B/block':>8} {'blocks':>8} {'x auto':>7} {'greedy=':>8} {'prefix':>7} "
          f"{'max|dlp|':>9} {'mean|dlp|':>10}")
    for r in report["quantized"]:
        print(f"{r['kv_cache_dtype']:>14} {r['bytes_per_block']:>8} {r['blocks_in_budget']:>8} "
              f"{r['blocks_vs_auto']:>7} {r['greedy_equal']:>8.2f} {r['greedy_prefix_share']:>7.3f} "
              f"{r['logprob_max_abs_delta']:>9.4f} {r['logprob_mean_abs_delta']:>10.5f}")
    w = report["sliding_window"]
    print(f"sliding window {w['window']}: {w['num_seqs']} sequences x {w['output_len']} tokens hold at most "
          f"{w['peak_blocks_windowed']} blocks vs {w['blocks_full_attention']} with full attention "
          f"({w['kv_saved_share']:.0%} saved)")
    if args.output_json:
        write_json(report, args.output_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
