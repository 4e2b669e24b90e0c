"""The memory-bandwidth floor of a decode step, and how close our engine's decode steps come to it.

A decode step must at least read every weight it uses once and every sequence's K/V context
once: bytes = weight bytes (all parameters; for an untied model the input embedding table
counts only the `batch` rows looked up) + sum(context lengths) * kv_bytes_per_token.
The floor is bytes / the device's copy bandwidth, measured in the run (a jitted `x + 1` over a
large float32 array: bytes read + written, warm-up then the median), as
`benchmarks/kernel_bench.py` measures it. A ratio of achieved step time to the floor of 1 is
perfect; what is above it is compute, launch/host overhead and kernels below copy speed.

`decode_roofline` runs `batch` fresh requests with `context`-token prompts through the engine,
then times whole `engine.step()` calls of decode-only steps (after warm-up steps; a step that
compiled is dropped) and splits each into host time (`engine.host_seconds`: scheduling, input
preparation, output processing) and the rest (dispatch, device, fetch of the sampled tokens).
"""

from __future__ import annotations

import time

import numpy as np

from pagedjax.bench.common import summary


def copy_bandwidth(nbytes: int, *, warmup: int = 3, iters: int = 20) -> dict:
    """Measured device copy bandwidth (read + write) over a `nbytes` float32 array."""
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((max(nbytes // 4, 1),), jnp.float32)
    fn = jax.jit(lambda a: a + 1)
    for _ in range(warmup):
        jax.block_until_ready(fn(x))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    moved = 2 * x.nbytes
    del x
    return dict(bytes_per_s=moved / seconds, gb_per_s=moved / seconds / 1e9, array_bytes=moved // 2,
                median_s=seconds, iters=iters, warmup=warmup, method="jit(x + 1) over float32, read + write")


def weight_bytes_read(params, cfg, batch: int) -> int:
    """Bytes of weights one decode step of `batch` sequences reads (module docstring)."""
    import jax

    leaves = jax.tree.leaves(params)
    total = sum(int(x.size) * x.dtype.itemsize for x in leaves)
    if not cfg.tie_word_embeddings:  # the input table is gathered, not streamed
        itemsize = max(x.dtype.itemsize for x in leaves)
        total += (batch - cfg.vocab_size) * cfg.hidden_size * itemsize
    return total


def step_floor_s(weight_bytes: int, kv_tokens: int, kv_bytes_per_token: int, bytes_per_s: float) -> float:
    """Seconds a step needs at copy bandwidth to read its weights and `kv_tokens` tokens of K/V."""
    return (weight_bytes + kv_tokens * kv_bytes_per_token) / bytes_per_s


def step_roofline(records: list[dict], *, weight_bytes: int, kv_bytes_per_token: int, bytes_per_s: float) -> dict:
    """Figures of timed decode steps (`records`: seconds, host_seconds, kv_tokens each) against the floor."""
    seconds = [r["seconds"] for r in records]
    host = [r["host_seconds"] for r in records]
    rest = [s - h for s, h in zip(seconds, host)]
    floors = [step_floor_s(weight_bytes, r["kv_tokens"], kv_bytes_per_token, bytes_per_s) for r in records]
    step, floor = float(np.median(seconds)), float(np.median(floors))
    return dict(num_steps=len(records), step_s=summary(seconds), host_s=summary(host), non_host_s=summary(rest),
                floor_s=floor, weight_bytes=weight_bytes,
                kv_bytes_median=float(np.median([r["kv_tokens"] for r in records])) * kv_bytes_per_token,
                ratio_to_floor=step / floor, non_host_ratio_to_floor=float(np.median(rest)) / floor,
                bandwidth_fraction=floor / step)


def decode_roofline(llm, batch: int, context: int, *, bytes_per_s: float, steps: int = 20, warmup_steps: int = 3,
                    seed: int = 0) -> dict:
    """Times decode steps of `batch` sequences at about `context` tokens of context (module docstring)."""
    from pagedjax.bench.engine_run import observe_steps
    from pagedjax.sampling_params import SamplingParams

    engine = llm.engine
    runner, cfg = engine.runner, engine.model_config
    new_tokens = warmup_steps + steps + 8  # spare steps replace ones that compiled
    blocks_each = -(-(context + new_tokens) // runner.block_size)
    problems = []
    if batch > engine.config.max_num_seqs:
        problems.append(f"batch {batch} > max_num_seqs {engine.config.max_num_seqs}")
    if context + new_tokens > engine.max_model_len:
        problems.append(f"context {context} + {new_tokens} steps > max_model_len {engine.max_model_len}")
    if batch * blocks_each > engine.scheduler.config.num_blocks:
        problems.append(f"needs {batch * blocks_each} KV blocks, the pool has {engine.scheduler.config.num_blocks}")
    if problems:
        return dict(batch=batch, context=context, skipped="; ".join(problems))
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, detokenize=False)
    records: list[dict] = []

    def on_step(so) -> None:
        records.append(dict(num_seqs=len(so.scheduled), decode=all(s.num_tokens == 1 for s in so.scheduled),
                            kv_tokens=sum(s.start_position + s.num_tokens for s in so.scheduled)))

    for i in range(batch):
        ids = rng.integers(0, cfg.vocab_size, size=context).tolist()
        engine.add_request(f"roofline-{batch}x{context}-{i}", None, params, prompt_token_ids=ids)
    with observe_steps(engine, on_step):
        while engine.has_unfinished_requests():
            n, h0, c0 = len(records), engine.host_seconds, runner.steps.compile_seconds
            t0 = time.perf_counter()
            engine.step()
            dt = time.perf_counter() - t0
            if len(records) > n:
                records[-1].update(seconds=dt, host_seconds=engine.host_seconds - h0,
                                   compiled=runner.steps.compile_seconds > c0)
    full = [r for r in records if r["decode"] and r["num_seqs"] == batch]
    timed = [r for r in full[warmup_steps:] if not r["compiled"]][:steps]
    if not timed:
        return dict(batch=batch, context=context, skipped="no full decode step was timed")
    weights = weight_bytes_read(runner.params, cfg, batch)
    kv_per_token = runner.kv_layout.bytes_per_block / runner.block_size  # scales included
    return dict(batch=batch, context=context, **step_roofline(timed, weight_bytes=weights,
                                                              kv_bytes_per_token=kv_per_token,
                                                              bytes_per_s=bytes_per_s))
