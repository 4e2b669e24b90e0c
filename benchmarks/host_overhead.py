"""Host time per decode step at N running sequences, and the compiled step's memory.

Host time = schedule + sampler-row set-up + input preparation + scheduler update + output
processing (what `LLMEngine.host_seconds` accumulates); the device step itself (transfers,
compute, fetching the sampled tokens) is excluded. Uses the tiny default model so the device
part is small; host work does not depend on the model size.

    python benchmarks/host_overhead.py --num-seqs 256 --prompt-len 400 --output-len 64 \
        --output-json benchmarks/results/host-overhead-cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import time

import jax
import numpy as np


def measure(num_seqs: int, prompt_len: int, output_len: int, block_size: int = 16) -> dict:
    from pagedjax import LLM, SamplingParams
    from pagedjax.default_model import default_model_dir

    max_len = prompt_len + output_len
    blocks = num_seqs * -(-max_len // block_size)
    llm = LLM(default_model_dir(), max_model_len=max(1024, max_len), num_kv_blocks=blocks, max_num_seqs=num_seqs,
              max_num_batched_tokens=8192, block_size=block_size)
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": [1] + rng.integers(3, 500, prompt_len - 1).tolist()} for _ in range(num_seqs)]
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # compile every bucket this workload uses
    engine = llm.engine
    host, sizes = [], []
    step = engine.step

    def timed_step():
        before = engine.host_seconds
        out = step()
        host.append(engine.host_seconds - before)
        return out

    sizes_observer = lambda sched: sizes.append((len(sched.scheduled), sched.num_batched_tokens))  # noqa: E731
    engine.step_observers.append(sizes_observer)
    engine.step = timed_step
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    decode = [h for h, (n, t) in zip(host, sizes) if n == t == num_seqs]
    runner = engine.runner
    mem_decode = runner.steps.memory(runner.steps.shape(num_seqs, num_seqs, runner.max_blocks_per_seq, True))
    mem_prefill = runner.steps.memory(runner.steps.shape(runner.buckets.token_buckets[-1], 1, runner.max_blocks_per_seq, False))
    return dict(attention_backend=engine.backend, num_seqs=num_seqs, prompt_len=prompt_len, output_len=output_len, decode_steps=len(decode),
                host_ms_median=1e3 * statistics.median(decode), host_ms_p90=1e3 * float(np.percentile(decode, 90)),
                wall_ms_per_step=1e3 * wall / len(host),
                step_memory_decode=mem_decode, step_memory_largest_prefill=mem_prefill)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=400)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    result = measure(args.num_seqs, args.prompt_len, args.output_len)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    result.update(device=str(jax.devices()[0].device_kind), platform=jax.default_backend(), jax=jax.__version__,
                  python=platform.python_version(), commit=commit)
    m, p = result["step_memory_decode"], result["step_memory_largest_prefill"]
    print(f"{'sequences':>10} {'host ms (median)':>17} {'host ms (p90)':>14} {'wall ms/step':>13}")
    print(f"{result['num_seqs']:>10} {result['host_ms_median']:>17.3f} {result['host_ms_p90']:>14.3f} "
          f"{result['wall_ms_per_step']:>13.2f}")
    for name, mem in (("decode step", m), ("largest prefill step", p)):
        print(f"{name}: temporaries {mem['temp_bytes'] / 2**20:.1f} MiB vs KV pool {mem['kv_pool_bytes'] / 2**20:.1f} MiB"
              f" ({100 * mem['temp_bytes'] / mem['kv_pool_bytes']:.1f}%)")
    # NOTE: the pool is donated and written in place, so temporaries do not grow with it (tested in
    # tests/engine/test_engine_behaviour.py); with the jnp reference backend they hold its K/V gather
    # (sequences x table width), which this tiny model's small pool makes look large.
    print(f"(attention backend: {result['attention_backend']}; temporaries do not depend on the pool size)")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
