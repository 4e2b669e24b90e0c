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

import jax
import jax.numpy as jnp
import numpy as np

from pagedjax.bench.common import rates
from pagedjax.bench.datasets import Workload


@jax.jit
def _greedy(logits):
    """f32 logits `[B, V]` -> i32 `[B]`."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _pow2_at_least(n: int, smallest: int = 16) -> int:
    return max(smallest, 1 << (max(n, 1) - 1).bit_length())


def static_batches(workload: Workload, batch_size: int) -> list[dict]:
    """Consecutive batches: request indices, padded prompt width and cache length of each."""
    out = []
    for start in range(0, len(workload), batch_size):
        idx = list(range(start, min(start + batch_size, len(workload))))
        width = _pow2_at_least(max(len(workload.prompts[i]) for i in idx))
        steps = max(workload.output_lens[i] for i in idx)
        out.append(dict(indices=idx, width=width, steps=steps, cache_len=_pow2_at_least(width + steps)))
    return out


class _Runner:
    """Prefill + decode of one static batch with StaticGenerator's jitted functions."""

    def __init__(self, generator, batch_size: int):
        from models.attention import ContiguousKVCache
        from pagedjax.static_generate import _decode, _prefill  # NOTE: no padding hook in StaticGenerator yet

        self.gen, self.batch_size = generator, batch_size
        self._prefill, self._decode, self._cache_cls = _prefill, _decode, ContiguousKVCache

    def run(self, prompts: list, width: int, steps: int, cache_len: int) -> np.ndarray:
        """Greedy tokens `i32[batch_size, steps]` for `prompts` (padded to the batch size with 1-token rows)."""
        gen, b = self.gen, self.batch_size
        tokens = np.zeros((b, width), np.int32)
        lengths = np.ones(b, np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
            lengths[i] = len(p)
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), (b, width))
        cfg = gen.config
        cache = self._cache_cls.create(cfg.num_layers, b, cache_len, cfg.num_kv_heads, cfg.head_dim, gen.cache_dtype)
        logits, cache = self._prefill(gen.graphdef, gen.state, cache, tokens, positions, lengths - 1)
        out = np.zeros((b, steps), np.int32)
        pos = lengths.copy()
        for step in range(steps):
            next_ids = _greedy(logits)
            out[:, step] = np.asarray(next_ids)  # the host fetch synchronises the step
            if step == steps - 1:
                break
            logits, cache = self._decode(gen.graphdef, gen.state, cache, next_ids, pos)
            pos = pos + 1
        return out


def run_static(graphdef, params, workload: Workload, *, batch_size: int) -> dict:
    """Runs `workload` as static batches of `batch_size` (module docstring); rates count useful tokens."""
    from flax import nnx

    from pagedjax.static_generate import StaticGenerator

    model = nnx.merge(graphdef, params)
    batches = static_batches(workload, batch_size)
    generator = StaticGenerator(model, max_len=max(b["cache_len"] for b in batches))
    runner = _Runner(generator, batch_size)
    start = time.perf_counter()
    for shape in sorted({(b["width"], b["cache_len"]) for b in batches}):  # warm-up: compile every shape
        runner.run([[0]], shape[0], 2, shape[1])
    warmup = time.perf_counter() - start
    token_ids: list[list[int]] = [[] for _ in range(len(workload))]
    computed = 0
    start = time.perf_counter()
    for b in batches:
        out = runner.run([workload.prompts[i] for i in b["indices"]], b["width"], b["steps"], b["cache_len"])
        for row, i in enumerate(b["indices"]):
            token_ids[i] = out[row, : workload.output_lens[i]].tolist()
        computed += len(b["indices"]) * b["steps"]
    elapsed = time.perf_counter() - start
    useful = sum(map(len, token_ids))
    return dict(**rates(len(workload), workload.num_prompt_tokens, useful, elapsed),
                num_requests=len(workload), prompt_tokens=workload.num_prompt_tokens, output_tokens=useful,
                computed_output_tokens=computed, batch_size=batch_size, num_batches=len(batches),
                warmup_s=warmup, excluded="warm-up: one run of every (prompt width, cache length) shape",
                token_ids=token_ids)
