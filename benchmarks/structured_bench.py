"""Structured outputs' cost: a batch with grammar-constrained requests against the same batch without,
in one run, and the grammar compile time per schema.

Throughput: the same prompts and the same number of generated tokens in every variant (greedy,
`max_tokens` = `--output-len`; the constrained requests follow a JSON schema that cannot end
before that many tokens, an array of integers with a huge `minItems`), so the time ratios compare
like with like: `free` (no constraint), `free_sync` (the same without asynchronous scheduling,
which constrained rows do without), `mixed` (every other request constrained) and `constrained`
(all). Each variant runs once to compile, then `--repeats` times, interleaved with
the others; the best time counts. The target is `constrained` <= 1.25x `free`.

Compile time: each schema compiled cold by a fresh `GrammarCompiler` (what a new schema costs
the first request that sends it) and again from the cache, over the tiny model's tokenizer and
over a larger BPE tokenizer trained the same way (`--compile-vocab`; the token trie's size is
what llguidance's compile time grows with).

    python benchmarks/structured_bench.py --num-prompts 64 --output-len 64 \\
        --output-json benchmarks/results/structured-cpu-DATE.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import jax
import numpy as np

ENDLESS_ARRAY = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 100000}

COMPILE_SCHEMAS = {
    "object-3-fields": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                         "ok": {"type": "boolean"}},
                        "required": ["name", "age", "ok"]},
    "nested-order": {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}, "price": {"type": "number"}},
            "required": ["sku", "qty"]}, "minItems": 1},
        "shipping": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "maxLength": 10}}}]},
        "status": {"enum": ["new", "paid", "shipped", "cancelled"]}},
        "required": ["id", "items", "status"]},
    "enum-200": {"enum": [f"label-{i}" for i in range(200)]},
    "tools-required-4": None,  # filled in from tool_choice_json_schema below
}
COMPILE_OTHERS = {"regex-date": {"regex": r"\d{4}-\d{2}-\d{2}"}, "choice-4": {"choice": ["yes", "no", "maybe", "?"]},
                  "grammar-arith": {"grammar": 'root ::= term (("+" | "-") term)*\nterm ::= [0-9]+'}}


def _tool_schema() -> dict:
    from pagedjax.tool_parsers import tool_choice_json_schema

    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q"]}}}
        for i in range(4)]
    return tool_choice_json_schema(tools, "required")


def measure_throughput(num_prompts: int, prompt_len: int, output_len: int, repeats: int) -> dict:
    from pagedjax import LLM, SamplingParams
    from pagedjax.default_model import default_model_dir

    max_len = prompt_len + output_len
    # NOTE: no prefix caching, so that every run does the same work (a rerun would hit the cache)
    options = dict(max_model_len=max(256, max_len), max_num_seqs=num_prompts,
                   num_kv_blocks=num_prompts * -(-max_len // 16) + 16, max_num_batched_tokens=max(512, prompt_len * 4),
                   enable_prefix_caching=False)
    llm = LLM(default_model_dir(), **options)
    # the same free batch without asynchronous scheduling: constrained rows are never fed from the
    # device, so this separates that cost from the bitmask's
    sync_llm = LLM(default_model_dir(), async_scheduling=False, **options)
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": [1] + rng.integers(3, 500, prompt_len - 1).tolist()} for _ in range(num_prompts)]
    free = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    constrained = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True,
                                 structured_outputs={"json": ENDLESS_ARRAY, "disable_any_whitespace": True})
    variants = {"free": [free] * num_prompts, "free_sync": [free] * num_prompts,
                "mixed": [constrained if i % 2 else free for i in range(num_prompts)],
                "constrained": [constrained] * num_prompts}
    engines = {name: sync_llm if name == "free_sync" else llm for name in variants}
    for name, params in variants.items():
        engines[name].generate(prompts, params, use_tqdm=False)  # compiles each variant's step shapes
    runs = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so that a machine's drift hits every variant alike
        for name, params in variants.items():
            engine = engines[name]
            before = engine.engine.host_seconds
            start = time.perf_counter()
            results = engine.generate(prompts, params, use_tqdm=False)
            runs[name].append((time.perf_counter() - start, engine.engine.host_seconds - before, results))
    out = {}
    decode = llm.get_tokenizer().decode
    for name, params in variants.items():
        best, host, results = min(runs[name], key=lambda run: run[0])
        tokens = sum(len(r.outputs[0].token_ids) for r in results)
        assert tokens == num_prompts * output_len, (name, tokens)
        all_seconds = [run[0] for run in runs[name]]
        out[name] = dict(seconds=best, seconds_median=statistics.median(all_seconds), seconds_all=all_seconds,
                         output_tokens=tokens, tokens_per_second=tokens / best, host_seconds=host)
        for r, p in zip(results, params):  # the constrained outputs are the array's prefix
            if p is constrained:
                # NOTE: decoded alone: the output text of a random-token prompt can start with the
                # prompt's undecodable tail (a detokenizer issue, reported), not the grammar's
                text = decode(r.outputs[0].token_ids)
                assert text.startswith("[") and set(text[1:]) <= set("0123456789,"), text[:40]
    for name in ("free_sync", "mixed", "constrained"):
        out[name]["time_ratio_vs_free"] = out[name]["seconds"] / out["free"]["seconds"]
        out[name]["median_time_ratio_vs_free"] = out[name]["seconds_median"] / out["free"]["seconds_median"]
    return out


def measure_compile(vocab_sizes: list[int]) -> dict:
    from pagedjax.default_model import train_tokenizer
    from pagedjax.structured_output import GrammarCompiler, StructuredOutputsParams, TokenizerInfo

    specs = {name: {"json": schema if schema is not None else _tool_schema()}
             for name, schema in COMPILE_SCHEMAS.items()}
    specs.update(COMPILE_OTHERS)
    out = {}
    for vocab in vocab_sizes:
        start = time.perf_counter()
        tok = train_tokenizer(vocab_size=vocab)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        info = TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), eos_token_ids=[tok.eos_token_id])
        info_s = time.perf_counter() - start
        per_schema = {}
        for name, fields in specs.items():
            params = StructuredOutputsParams.from_dict(fields)
            cold = []
            for _ in range(3):
                compiler = GrammarCompiler(info)
                start = time.perf_counter()
                compiler.compile(params)
                cold.append(time.perf_counter() - start)
            cached = []
            for _ in range(5):
                start = time.perf_counter()
                compiler.compile(params)
                cached.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(100):
                compiler.matcher(params)
            per_schema[name] = dict(cold_ms=1e3 * statistics.median(cold), cached_ms=1e3 * statistics.median(cached),
                                    new_matcher_us=1e6 * (time.perf_counter() - start) / 100)
        out[str(len(tok))] = dict(tokenizer_train_s=train_s, tokenizer_info_ms=1e3 * info_s, schemas=per_schema)
    return out


def measure_fill(num_rows: int, steps: int = 20) -> dict:
    """Host time to fill one step's bitmask for `num_rows` constrained rows (the endless array's
    matchers advanced in lock-step): one row at a time, as `TokenConstraint.fill_bitmask` does
    today, against `fill_bitmask_rows` with an `llguidance.LLExecutor` (all rows in one call,
    on several threads)."""
    import llguidance

    from pagedjax.default_model import train_tokenizer
    from pagedjax.structured_output import (GrammarCompiler, StructuredOutputsParams, TokenizerInfo,
                                            allocate_bitmask, fill_bitmask_rows)

    tok = train_tokenizer()
    info = TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), eos_token_ids=[tok.eos_token_id])
    params = StructuredOutputsParams(json=ENDLESS_ARRAY, disable_any_whitespace=True)
    compiler = GrammarCompiler(info)
    digits = [tok.convert_tokens_to_ids(c) for c in "[1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1"]
    out = {}
    for mode in ("per_row", "batched"):
        matchers = [compiler.matcher(params) for _ in range(num_rows)]
        bitmask = allocate_bitmask(num_rows, info.vocab_size)
        executor = llguidance.LLExecutor()
        times = []
        for step in range(steps):
            start = time.perf_counter()
            if mode == "per_row":
                for row, m in enumerate(matchers):
                    m.fill_bitmask(bitmask, row)
            else:
                fill_bitmask_rows(bitmask, matchers, executor=executor)
            times.append(time.perf_counter() - start)
            for m in matchers:
                m.accept(digits[step])
        out[f"{mode}_ms_per_step"] = 1e3 * statistics.median(times)
    out["num_rows"] = num_rows
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-vocab", type=int, nargs="*", default=[512, 16000],
                        help="BPE vocabulary sizes to time grammar compiles over (trained on the stdlib's docstrings)")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    result = dict(workload=dict(num_prompts=args.num_prompts, prompt_len=args.prompt_len, output_len=args.output_len,
                                repeats=args.repeats, model="the built-in tiny Llama (random weights)",
                                constrained_schema=ENDLESS_ARRAY))
    result["throughput"] = measure_throughput(args.num_prompts, args.prompt_len, args.output_len, args.repeats)
    result["bitmask_fill"] = measure_fill(args.num_prompts)
    result["compile"] = measure_compile(args.compile_vocab)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    result.update(device=str(jax.devices()[0].device_kind), platform=jax.default_backend(), jax=jax.__version__,
                  python=platform.python_version(), commit=commit)
    tp = result["throughput"]
    print(f"{'variant':<12} {'best s':>8} {'median s':>9} {'tok/s':>9} {'x free':>7} {'x free (median)':>16}")
    for name, r in tp.items():
        print(f"{name:<12} {r['seconds']:8.3f} {r['seconds_median']:9.3f} {r['tokens_per_second']:9.1f} "
              f"{r.get('time_ratio_vs_free', 1.0):7.3f} {r.get('median_time_ratio_vs_free', 1.0):16.3f}")
    fill = result["bitmask_fill"]
    print(f"bitmask fill, {fill['num_rows']} rows: one at a time {fill['per_row_ms_per_step']:.2f} ms/step, "
          f"batched {fill['batched_ms_per_step']:.2f} ms/step")
    for vocab, c in result["compile"].items():
        print(f"grammar compile, vocabulary {vocab} (tokenizer info {c['tokenizer_info_ms']:.1f} ms):")
        for name, s in c["schemas"].items():
            print(f"  {name:<18} cold {s['cold_ms']:8.2f} ms   cached {s['cached_ms']:6.3f} ms   "
                  f"new matcher {s['new_matcher_us']:6.1f} us")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
