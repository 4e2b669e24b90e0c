"""The `jax-static` baseline: our own model, a contiguous per-sequence cache, static batches.

It isolates what paging and continuous batching buy: the same Flax model and weights as the
engine, run the way `pagedjax.static_generate.StaticGenerator` runs them — requests in
submission order, `batch_size` at a time, prompts right-padded, every sequence of a batch
decoding in lock-step until the batch's longest output is done, greedy, a host fetch of the
sampled tokens every step (as an engine must, to check stops). Only each request's own output
tokens count as useful.

To keep compilation out of the timed loop, the prompt width is padded to a power of two (>= 16)
and the cache length of a batch (StaticGenerator reserves `max_len` rows per sequence) is the
power of two at or above prompt width + the batch's longest output; every (batch, prompt width,
cache length) shape of the workload is compiled and run once in a warm-up first.
"""

from __future__ import annotations

import time

from pagedjax.bench.common import rates
from pagedjax.bench.datasets import Workload
from pagedjax.step_shapes import pow2_at_least


def static_batches(workload: Workload, batch_size: int) -> list[dict]:
    """Consecutive batches: request indices, padded prompt width and cache length of each."""
    out = []
    for start in range(0, len(workload), batch_size):
        idx = list(range(start, min(start + batch_size, len(workload))))
        width = pow2_at_least(max(len(workload.prompts[i]) for i in idx), 16)
        steps = max(workload.output_lens[i] for i in idx)
        out.append(dict(indices=idx, width=width, steps=steps, cache_len=pow2_at_least(width + steps, 16)))
    return out


def run_static(graphdef, params, workload: Workload, *, batch_size: int) -> dict:
    """Runs `workload` as static batches of `batch_size` (module docstring); rates count useful tokens."""
    from flax import nnx

    from pagedjax.static_generate import StaticGenerator

    model = nnx.merge(graphdef, params)
    batches = static_batches(workload, batch_size)
    generator = StaticGenerator(model, max_len=max(b["cache_len"] for b in batches))

    def run(prompts, width, steps, cache_len):  # greedy, every row padded to `steps` tokens
        return generator.generate(prompts, steps, ignore_eos=True, pad_batch_to=batch_size, pad_prompt_to=width,
                                  cache_len=cache_len)

    start = time.perf_counter()
    for shape in sorted({(b["width"], b["cache_len"]) for b in batches}):  # warm-up: compile every shape
        run([[0]], shape[0], 2, shape[1])
    warmup = time.perf_counter() - start
    token_ids: list[list[int]] = [[] for _ in range(len(workload))]
    computed = 0
    start = time.perf_counter()
    for b in batches:
        out = run([workload.prompts[i] for i in b["indices"]], b["width"], b["steps"], b["cache_len"])
        for row, i in enumerate(b["indices"]):
            token_ids[i] = out[row][: workload.output_lens[i]]
        computed += len(b["indices"]) * b["steps"]
    elapsed = time.perf_counter() - start
    useful = sum(map(len, token_ids))
    return dict(**rates(len(workload), workload.num_prompt_tokens, useful, elapsed),
                num_requests=len(workload), prompt_tokens=workload.num_prompt_tokens, output_tokens=useful,
                computed_output_tokens=computed, batch_size=batch_size, num_batches=len(batches),
                warmup_s=warmup, excluded="warm-up: one run of every (prompt width, cache length) shape",
                token_ids=token_ids)
