"""Engine core v2 against a previous checkout, side by side in one invocation.

    python benchmarks/engine_core_bench.py --baseline-repo /path/to/old/checkout \\
        [--output-json benchmarks/results/engine-core-v2-cpu.json]

Runs the same requests, in fresh subprocesses one after another, on (a) the baseline checkout
(e.g. a `git worktree` of the previous main: its engine is synchronous), (b) this checkout with
`async_scheduling=False` and (c) this checkout with asynchronous scheduling (the default):

- host-heavy: a tiny Llama (2 layers, hidden 64), 256 requests of 8 prompt / 64 output tokens,
  all submitted at once, greedy, ignore_eos;
- a ~75M-parameter Llama shape (random weights, no tokenizer), 256 requests of 8 / 16 tokens.

Reported per run: output tokens/s (compilation excluded: a warm-up pass of the same shapes
runs first), the host time per decode step at 256 sequences (scheduling, input preparation and
output processing: step() time not waiting for the device), and the part of it *not*
overlapped with device work: wall time per decode step minus the device time of that step's
compiled function replayed back to back (the baseline is synchronous: all of its host time is
exposed). CPU figures are only meaningful as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    "tiny-host-heavy": dict(config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512),
                            prompt_len=8, output_len=64),
    "llama-75m": dict(config=dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=8,
                                  num_attention_heads=10, num_key_value_heads=5, head_dim=64, vocab_size=32000),
                      prompt_len=8, output_len=16),
}

# Runs inside a subprocess with PYTHONPATH = the checkout under test; prints one JSON line.
_WORKER = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    args = json.loads(sys.argv[1])
    from pagedjax import LLM, SamplingParams
    options = dict(num_kv_blocks=args["num_blocks"], max_model_len=args["max_model_len"], max_num_seqs=256,
                   max_num_batched_tokens=2048, skip_tokenizer_init=True)
    if args["async"] is not None:
        options["async_scheduling"] = args["async"]
    llm = LLM(args["model"], **options)
    rng = np.random.default_rng(0)
    def workload(n):
        return [{"prompt_token_ids": rng.integers(3, args["vocab"], args["prompt_len"]).tolist()} for _ in range(n)]
    params = SamplingParams(temperature=0.0, max_tokens=args["output_len"], ignore_eos=True, detokenize=False)
    llm.generate(workload(256), params, use_tqdm=False)  # warm-up: compiles the run's shapes
    engine = llm.engine
    compiles = lambda: getattr(engine.runner, 'steps', engine.runner).compile_seconds  # noqa: E731
    compile0 = compiles()
    steps = []
    def observe(out):
        steps.append((time.perf_counter(), len(out.scheduled), out.num_batched_tokens))
    engine.step_observers.append(observe)
    host0, steps0 = engine.host_seconds, engine.num_steps
    start = time.perf_counter()
    outs = llm.generate(workload(256), params, use_tqdm=False)
    elapsed = time.perf_counter() - start - (compiles() - compile0)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    decode = [t for t, n, b in steps if n == 256 and b == 256]
    gaps = np.diff(decode)
    host_per_step = (engine.host_seconds - host0) / max(1, engine.num_steps - steps0)
    # Device time of one decode step at 256 sequences, replayed back to back.
    runner = engine.runner
    if hasattr(runner, "steps"):  # this checkout's runner
        shape = runner.steps.shape(256, 256, runner.buckets.width_buckets[-1], True)
        fn = runner.steps.get(shape)
        abstract = runner.steps.abstract_args(shape, runner._pool_struct(runner.num_blocks))
    else:  # the previous runner
        shape = runner.step_shape(256, 256, runner.width_buckets[-1], True)
        fn = runner.compiled_step(shape)
        abstract = runner._abstract_args(shape)
    import jax
    import dataclasses
    zeros = list(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract[2:]))
    ones = lambda a: np.ones_like(a)  # noqa: E731 (top_p, repetition_penalty: off)
    zeros[1] = dataclasses.replace(zeros[1], top_p=ones(zeros[1].top_p),
                                   repetition_penalty=ones(zeros[1].repetition_penalty))
    pool = runner.kv_pool
    def call(pool):
        out = fn(runner.params, pool, *zeros)
        return out[0], out
    pool, out = call(pool); jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(20):
        pool, out = call(pool)
    jax.block_until_ready(out)
    device = (time.perf_counter() - t0) / 20
    runner.kv_pool = pool
    wall = float(np.median(gaps)) if len(gaps) else None
    print(json.dumps(dict(output_tokens_per_s=tokens / elapsed, elapsed_s=elapsed, output_tokens=tokens,
                          decode_steps_at_256=int(len(decode)), wall_per_decode_step_ms=wall * 1e3 if wall else None,
                          device_per_decode_step_ms=device * 1e3, host_per_step_ms=host_per_step * 1e3,
                          exposed_host_per_decode_step_ms=max(0.0, wall - device) * 1e3 if wall else None)))
''')


def _checkpoint(out_dir: str, spec: dict) -> str:
    sys.path.insert(0, REPO)
    from pagedjax.default_model import tiny_llama_config, write_random_checkpoint

    fields = dict(spec["config"])
    config = tiny_llama_config(fields.pop("vocab_size"), **fields, max_position_embeddings=256)
    write_random_checkpoint(out_dir, config, std=0.05)
    return out_dir


def run_one(repo: str, model_dir: str, spec: dict, async_mode: bool | None) -> dict:
    tokens = spec["prompt_len"] + spec["output_len"]
    args = dict(model=model_dir, async_=None, num_blocks=256 * -(-tokens // 16) + 16, max_model_len=tokens + 8,
                prompt_len=spec["prompt_len"], output_len=spec["output_len"], vocab=spec["config"]["vocab_size"])
    args["async"] = args.pop("async_") if async_mode is None else async_mode
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    res = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(args)], capture_output=True, text=True,
                         env=env, cwd=repo, timeout=3600)
    if res.returncode:
        raise RuntimeError(f"worker failed ({repo}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-repo", required=True, help="checkout of the previous main (git worktree)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=2, help="trials per configuration (alternating order)")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    from pagedjax.bench.common import environment, git_info

    report = dict(benchmark="engine-core-v2", environment=environment(), baseline_commit=subprocess.run(
        ["git", "-C", args.baseline_repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        commit=git_info(), runs={})
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = MODELS[name]
            model_dir = _checkpoint(os.path.join(tmp, name), spec)
            configs = {"baseline (sync)": (args.baseline_repo, None), "v2 sync": (REPO, False),
                       "v2 async": (REPO, True)}
            trials: dict[str, list] = {label: [] for label in configs}
            for repeat in range(args.repeats):  # alternating order: slow drifts of the machine cancel
                order = list(configs) if repeat % 2 == 0 else list(configs)[::-1]
                for label in order:
                    trials[label].append(run_one(*configs[label][:1], model_dir, spec, configs[label][1]))
            # each configuration's best trial (the least disturbed by other load), all trials kept
            runs = {label: dict(max(t, key=lambda r: r["output_tokens_per_s"]), trials=t)
                    for label, t in trials.items()}
            base = runs["baseline (sync)"]["output_tokens_per_s"]
            for r in runs.values():
                r["speedup_vs_baseline"] = r["output_tokens_per_s"] / base
            report["runs"][name] = dict(workload=dict(num_requests=256, prompt_len=spec["prompt_len"],
                                                      output_len=spec["output_len"], model=spec["config"]), **runs)
            print(f"\n{name}")
            print(f"{'run':<18}{'out tok/s':>11}{'x base':>8}{'host/step ms':>14}{'wall/step':>11}"
                  f"{'device/step':>13}{'exposed host':>14}")
            for label, r in runs.items():
                fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
                print(f"{label:<18}{r['output_tokens_per_s']:>11.1f}{r['speedup_vs_baseline']:>8.2f}"
                      f"{r['host_per_step_ms']:>14.2f}{fmt(r['wall_per_decode_step_ms']):>11}"
                      f"{r['device_per_decode_step_ms']:>13.2f}{fmt(r['exposed_host_per_decode_step_ms']):>14}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
