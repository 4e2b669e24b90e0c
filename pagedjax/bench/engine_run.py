"""Our engine under benchmark: built from the shared checkpoint, warmed up, driven step by step.

`run_engine` submits a workload at once (as vLLM's throughput benchmark does) and calls
`engine.step()` until every request finished, timing the loop with `time.perf_counter`; each
step fetches its sampled tokens to the host, so step boundaries are synchronised. Every step's
`SchedulerOutput` and the KV-slot usage (`Scheduler.kv_slot_usage()`) are recorded through
`observe_steps`; the time spent recording is subtracted, and so is any compilation that still
happened during the timed loop (after the warm-up pass of `warm_up`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

from pagedjax.bench.common import rates
from pagedjax.bench.datasets import Workload
from pagedjax.bench.weights import ModelSource


def build_llm(source: ModelSource, options: dict):
    """`LLM` over the shared checkpoint in the benchmark's dtype; `options` are `LLM` keyword arguments.

    A checkpoint without tokenizer files (a preset's) gets no tokenizer: prompts are token ids.
    """
    from pagedjax.llm import LLM

    return LLM(source.model_dir, dtype=source.dtype, skip_tokenizer_init=not source.has_tokenizer, **options)


def engine_config(llm) -> dict:
    """The engine's effective configuration (what the JSON records)."""
    engine = llm.engine
    cfg = {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
           for k, v in dataclasses.asdict(engine.config).items()}
    cfg.update(max_model_len=engine.max_model_len, max_num_batched_tokens=engine.max_num_batched_tokens,
               num_kv_blocks=engine.scheduler.config.num_blocks, attention_backend_resolved=engine.backend,
               platform=engine.platform)
    return cfg


def warm_up(llm, workload: Workload, *, seed: int = 0, max_new_tokens: int = 8) -> dict:
    """Warm-up before timing: a short pass (`warmup_workload`) that compiles and runs once the
    step buckets of the workload's first wave of requests. Buckets first met later compile inside
    the timed loop, and `run_engine` subtracts that time."""
    engine = llm.engine
    runner = engine.runner
    compiles0, compile0 = runner.steps.num_compiles, runner.steps.compile_seconds
    start = time.perf_counter()
    run_engine(llm, warmup_workload(workload, engine.config.max_num_seqs, engine.model_config.vocab_size, seed=seed,
                                    max_new_tokens=max_new_tokens), tag="warmup", probe_kv=False)
    return dict(seconds=time.perf_counter() - start, num_compiled=runner.steps.num_compiles - compiles0,
                compile_seconds=runner.steps.compile_seconds - compile0)


def warmup_workload(workload: Workload, max_num_seqs: int, vocab_size: int, *, seed: int = 0,
                    max_new_tokens: int = 8) -> Workload:
    """The first `max_num_seqs` requests' lengths with fresh random prompt ids (no prefix-cache hits
    on the real ones) and at most `max_new_tokens` outputs."""
    import numpy as np

    n = min(len(workload), max_num_seqs)
    rng = np.random.default_rng([seed, 1])
    prompts = tuple(tuple(int(t) for t in rng.integers(0, vocab_size, len(p))) for p in workload.prompts[:n])
    return dataclasses.replace(workload, prompts=prompts, output_lens=tuple(min(o, max_new_tokens)
                                                                          for o in workload.output_lens[:n]))


@contextlib.contextmanager
def observe_steps(engine, callback: Callable):
    """Calls `callback(scheduler_output)` for every non-empty step while the block runs.

    Uses the engine's `step_observers` hook when it has one; otherwise wraps this engine's
    scheduler's `schedule` (on the instance only, restored afterwards).
    """
    observers = getattr(engine, "step_observers", None)
    if observers is not None:
        observers.append(callback)
        try:
            yield
        finally:
            observers.remove(callback)
        return
    scheduler = engine.scheduler
    original = scheduler.schedule

    def schedule():
        out = original()
        if out.scheduled:
            callback(out)
        return out

    scheduler.schedule = schedule
    try:
        yield
    finally:
        del scheduler.schedule


def reset_prefix_cache(llm) -> None:
    """Forgets every cached KV block, so a rerun of the same prompts computes them again."""
    if not llm.reset_prefix_cache():
        raise RuntimeError("reset_prefix_cache needs an idle engine")


def kv_figures(samples: list[tuple[int, int, int]], max_model_len: int, pool_slots: int) -> dict:
    """KV-memory figures from per-step (allocated slots, filled slots, running sequences) samples.

    `paged_waste`: the time average (over steps) of the fraction of allocated slots holding no
    token; `contiguous_waste`: the same for a cache that reserves `max_model_len` slots per
    running sequence (a static contiguous cache) over the same steps.
    """
    paged = [1.0 - f / a for a, f, _ in samples if a > 0]
    contiguous = [1.0 - f / (r * max_model_len) for _, f, r in samples if r > 0]
    return dict(
        paged_waste=sum(paged) / len(paged) if paged else None,
        contiguous_waste=sum(contiguous) / len(contiguous) if contiguous else None,
        paged_waste_token_weighted=(1.0 - sum(f for _, f, _ in samples) / sum(a for a, _, _ in samples)
                                    if any(a for a, _, _ in samples) else None),
        num_steps_sampled=len(samples), max_model_len=max_model_len, pool_slots=pool_slots,
        peak_allocated_slots=max((a for a, _, _ in samples), default=0),
        peak_pool_fraction=max((a for a, _, _ in samples), default=0) / pool_slots,
        mean_running=sum(r for _, _, r in samples) / len(samples) if samples else 0.0,
        max_running=max((r for _, _, r in samples), default=0),
        definition="time average over engine steps of 1 - filled/allocated slots (paged) and of "
                   "1 - filled/(running * max_model_len) (contiguous reservation); sampled right after "
                   "scheduling, when this step's tokens already hold their slots")


class StepTimes:
    """Seconds spent in decode-only steps and in steps with prefill tokens (compilation and probes excluded)."""

    def __init__(self):
        self.totals = {True: [0, 0, 0.0], False: [0, 0, 0.0]}  # decode only -> [steps, tokens, seconds]

    def add(self, decode_only: bool, num_tokens: int, seconds: float) -> None:
        t = self.totals[decode_only]
        t[0], t[1], t[2] = t[0] + 1, t[1] + num_tokens, t[2] + seconds

    def figures(self) -> dict:
        return {name: dict(steps=t[0], tokens=t[1], seconds=t[2], ms_per_step=1e3 * t[2] / t[0] if t[0] else None)
                for name, t in (("decode_only", self.totals[True]), ("with_prefill", self.totals[False]))}


def run_engine(llm, workload: Workload, *, tag: str = "bench", probe_kv: bool = True) -> dict:
    """Runs `workload` (all requests at once, greedy, `ignore_eos`, exact output lengths) to the end.

    Returns the rates, elapsed time (compilation and probing excluded), step and host-time
    counts, KV figures and each request's output token ids (`token_ids`, in workload order).
    """
    from pagedjax.sampling_params import SamplingParams

    engine = llm.engine
    runner, sched = engine.runner, engine.scheduler
    stats0 = engine.stats()
    compile0, steps0, host0 = runner.steps.compile_seconds, engine.num_steps, engine.host_seconds
    samples: list[tuple[int, int, int]] = []
    kinds: list[tuple[bool, int]] = []  # per step: (decode only, tokens)
    probe_seconds = 0.0

    def probe(so) -> None:
        nonlocal probe_seconds
        t = time.perf_counter()
        kinds.append((all(s.num_tokens == 1 for s in so.scheduled), so.num_batched_tokens))
        if probe_kv:
            allocated, filled = sched.kv_slot_usage()
            samples.append((allocated, filled, sched.num_running))
        probe_seconds += time.perf_counter() - t

    ids = [f"{tag}-{i}" for i in range(len(workload))]
    outputs: dict[str, list[int]] = {}
    with observe_steps(engine, probe):
        start = time.perf_counter()
        for rid, prompt, out_len in zip(ids, workload.prompts, workload.output_lens):
            params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True, detokenize=False)
            engine.add_request(rid, None, params, prompt_token_ids=list(prompt))
        steps = StepTimes()
        while engine.has_unfinished_requests():
            n, c0, p0, t0 = len(kinds), runner.steps.compile_seconds, probe_seconds, time.perf_counter()
            for out in engine.step():
                if out.finished:
                    outputs[out.request_id] = list(out.outputs[0].token_ids)
            if len(kinds) > n:
                dt = time.perf_counter() - t0 - (runner.steps.compile_seconds - c0) - (probe_seconds - p0)
                steps.add(*kinds[-1], dt)
        wall = time.perf_counter() - start
    compile_in_run = runner.steps.compile_seconds - compile0
    elapsed = wall - probe_seconds - compile_in_run
    token_ids = [outputs[rid] for rid in ids]
    produced = sum(map(len, token_ids))
    if produced != workload.num_output_tokens:
        raise RuntimeError(f"engine produced {produced} output tokens, the workload asks for "
                           f"{workload.num_output_tokens}: outputs are not exact-length")
    stats1 = engine.stats()
    host = engine.host_seconds - host0 - probe_seconds  # the probes ran inside the engine's host time
    num_blocks = engine.scheduler.config.num_blocks
    return dict(
        **rates(len(workload), workload.num_prompt_tokens, produced, elapsed),
        num_requests=len(workload), prompt_tokens=workload.num_prompt_tokens, output_tokens=produced,
        wall_s=wall, excluded_probe_s=probe_seconds, excluded_compile_s=compile_in_run,
        num_steps=engine.num_steps - steps0, host_s=host, host_fraction=host / elapsed,
        num_preemptions=stats1.get("num_preemptions", 0) - stats0.get("num_preemptions", 0),
        prefix_cache_hit_tokens=stats1.get("prefix_cache_hits", 0) - stats0.get("prefix_cache_hits", 0),
        steps=steps.figures(),
        kv_memory=kv_figures(samples, engine.max_model_len, num_blocks * runner.block_size) if probe_kv else None,
        token_ids=token_ids)
