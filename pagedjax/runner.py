"""The model runner: pads each scheduled step to a bucket and runs one jitted step per bucket.

The KV pool `[num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]` is allocated
once and donated to every step, which writes this step's K/V into it in place and attends
through the block tables. Shapes inside jit are static: a step is padded to a bucket
(`StepShape`) from a short fixed list, each bucket is compiled once (ahead of time, counted in
`num_compiles`), and `precompile()` can build them all up front.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.attention import PagedAttentionMetadata, PagedKVCache
from models.config import ModelConfig
from pagedjax.sampler import MAX_LOGPROBS, SamplingTensors, sample


def pow2_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `largest`, with `largest` itself as the last bucket."""
    out, b = [], smallest
    while b < largest:
        out.append(b)
        b *= 2
    out.append(largest)
    return tuple(out)


def pick_bucket(buckets: Sequence[int], n: int) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


@dataclasses.dataclass(frozen=True)
class StepShape:
    """The static shape of one compiled step."""

    num_tokens: int  # T: packed tokens
    num_seqs: int  # S: sequences (rows of block tables and of the sampler)
    table_width: int  # W: block-table columns
    decode_only: bool  # one token per sequence: the decode kernel
    penalty_len: int  # P: token-history columns for penalties (0 = no row uses penalties)
    suppress_len: int  # E: suppressed-token columns (min_tokens), 0 = none
    num_logprobs: int  # top logprobs returned per row (0 or MAX_LOGPROBS)


@dataclasses.dataclass(frozen=True)
class SamplingRow:
    """What the runner needs to sample one sequence's next token (built by the engine)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    wants_logprobs: bool = False

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


@dataclasses.dataclass
class StepResult:
    """Host-side results of one step, one entry per scheduled sequence (in batch order)."""

    token_ids: np.ndarray  # i32[num_seqs]
    logprobs: np.ndarray  # f32[num_seqs]: raw logprob of the sampled token
    ranks: np.ndarray  # i32[num_seqs]
    top_ids: np.ndarray | None  # i32[num_seqs, MAX_LOGPROBS] when any row asked for logprobs
    top_logprobs: np.ndarray | None  # f32[num_seqs, MAX_LOGPROBS]


def _step(graphdef, backend: str, decode_only: bool, num_logprobs: int,
          params, kv_pool, inputs: dict, sampling: SamplingTensors, rng):
    """One engine step on device: forward over the packed tokens, then sample one token per row.

    `rng` u32[2] = (engine seed, step counter): this step's key is derived on device, saving a
    host-side dispatch per step.
    """
    model = nnx.merge(graphdef, params)
    key = jax.random.fold_in(jax.random.key(rng[0]), rng[1])
    metadata = PagedAttentionMetadata(
        slot_mapping=inputs["slot_mapping"], block_tables=inputs["block_tables"], kv_lens=inputs["kv_lens"],
        query_start_loc=inputs["query_start_loc"], backend=backend, decode_only=decode_only)
    hidden, cache = model(inputs["token_ids"], inputs["positions"], PagedKVCache(kv_pool, metadata))
    logits = model.compute_logits(hidden[inputs["logits_indices"]])  # f32[S, V]
    outs = sample(logits, sampling, key, num_logprobs=num_logprobs)
    return cache.kv_pool, outs


def _copy_blocks(kv_pool, src, dst):
    """kv_pool[:, :, :, dst] = kv_pool[:, :, :, src] (copy-on-write), in place when donated."""
    return kv_pool.at[:, :, :, dst].set(kv_pool[:, :, :, src])


class ModelRunner:
    """Owns the parameters, the KV pool and the compiled steps; executes `SchedulerOutput`s."""

    def __init__(self, graphdef, params, config: ModelConfig, *, num_blocks: int, block_size: int,
                 max_model_len: int, max_num_seqs: int, max_num_batched_tokens: int, backend: str,
                 kv_dtype, seed: int = 0):
        self.graphdef, self.params, self.config = graphdef, params, config
        self.block_size, self.num_blocks, self.backend = block_size, num_blocks, backend
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.max_num_seqs = max_num_seqs
        self.token_buckets = pow2_buckets(16, max(16, max_num_batched_tokens))
        self.seq_buckets = pow2_buckets(min(8, max_num_seqs), max_num_seqs)
        # The Pallas kernels loop to each sequence's length, so one full-width table costs nothing;
        # the jnp reference gathers the whole table, so it gets width buckets.
        self.width_buckets = ((self.max_blocks_per_seq,) if backend == "pallas"
                              else pow2_buckets(min(4, self.max_blocks_per_seq), self.max_blocks_per_seq))
        shape = (config.num_layers, 2, config.num_kv_heads, num_blocks, block_size, config.head_dim)
        self.kv_pool = jnp.zeros(shape, kv_dtype)  # [L, 2, Hkv, num_blocks, block_size, D]
        self._seed = seed & 0xFFFFFFFF
        self._step_count = 0
        self._compiled: dict = {}
        self.num_compiles = 0
        self.compile_seconds = 0.0

    # ----------------------------------------------------------------------------- shapes

    def step_shape(self, num_tokens: int, num_seqs: int, max_blocks: int, decode_only: bool,
                   penalty_len: int = 0, suppress_len: int = 0, logprobs: bool = False) -> StepShape:
        if decode_only:
            seqs = pick_bucket(self.seq_buckets, num_seqs)
            tokens = seqs
        else:
            # S depends on T alone (S >= num_seqs since every sequence has a token): fewer buckets.
            tokens = pick_bucket(self.token_buckets, num_tokens)
            seqs = pick_bucket(self.seq_buckets, min(tokens, self.max_num_seqs))
        return StepShape(
            num_tokens=tokens, num_seqs=seqs, table_width=pick_bucket(self.width_buckets, max(max_blocks, 1)),
            decode_only=decode_only,
            penalty_len=pick_bucket(pow2_buckets(16, 1 << 30), penalty_len) if penalty_len else 0,
            suppress_len=pick_bucket(pow2_buckets(4, 1 << 20), suppress_len) if suppress_len else 0,
            num_logprobs=MAX_LOGPROBS if logprobs else 0)

    def all_step_shapes(self) -> list[StepShape]:
        """Every plain-sampling bucket (no penalties, suppression or logprobs): what warm-up compiles."""
        shapes = []
        for w in self.width_buckets:
            for s in self.seq_buckets:
                shapes.append(self.step_shape(s, s, w, True))
            for t in self.token_buckets:
                shapes.append(self.step_shape(t, 1, w, False))
        return list(dict.fromkeys(shapes))

    def _abstract_args(self, shape: StepShape):
        t, s, w = shape.num_tokens, shape.num_seqs, shape.table_width
        i32 = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.int32)  # noqa: E731
        f32 = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.float32)  # noqa: E731
        inputs = dict(token_ids=i32(t), positions=i32(t), slot_mapping=i32(t), block_tables=i32(s, w),
                      kv_lens=i32(s), query_start_loc=i32(s + 1), logits_indices=i32(s))
        sampling = SamplingTensors(
            temperature=f32(s), top_k=i32(s), top_p=f32(s), min_p=f32(s), presence_penalty=f32(s),
            frequency_penalty=f32(s), repetition_penalty=f32(s), seed=jax.ShapeDtypeStruct((s,), jnp.uint32),
            has_seed=jax.ShapeDtypeStruct((s,), jnp.bool_), sample_index=i32(s),
            suppress_tokens=i32(s, shape.suppress_len), prompt_tokens=i32(s, shape.penalty_len),
            output_tokens=i32(s, shape.penalty_len))
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.params)
        pool = jax.ShapeDtypeStruct(self.kv_pool.shape, self.kv_pool.dtype, sharding=self.kv_pool.sharding)
        return params, pool, inputs, sampling, jax.ShapeDtypeStruct((2,), jnp.uint32)

    def compiled_step(self, shape: StepShape):
        """The compiled step for `shape` (compiling it on first use)."""
        fn = self._compiled.get(shape)
        if fn is None:
            start = time.perf_counter()
            jitted = jax.jit(functools.partial(_step, self.graphdef, self.backend, shape.decode_only,
                                               shape.num_logprobs), donate_argnums=(1,))
            fn = jitted.lower(*self._abstract_args(shape)).compile()
            self._compiled[shape] = fn
            self.num_compiles += 1
            self.compile_seconds += time.perf_counter() - start
        return fn

    def precompile(self, shapes: Sequence[StepShape] | None = None) -> int:
        """Compiles the given buckets (default: all plain-sampling ones); returns how many were new."""
        before = self.num_compiles
        for shape in shapes or self.all_step_shapes():
            self.compiled_step(shape)
        return self.num_compiles - before

    def step_memory(self, shape: StepShape) -> dict:
        """The compiled step's memory analysis: temporaries against the KV pool's size."""
        analysis = self.compiled_step(shape).memory_analysis()
        return dict(temp_bytes=int(analysis.temp_size_in_bytes),
                    argument_bytes=int(analysis.argument_size_in_bytes),
                    kv_pool_bytes=int(self.kv_pool.size * self.kv_pool.dtype.itemsize))

    # ----------------------------------------------------------------------------- execution

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Applies copy-on-write block copies (src, dst) to the pool."""
        if not pairs:
            return
        n = pick_bucket(pow2_buckets(4, 1 << 20), len(pairs))
        src = np.zeros(n, np.int32)
        dst = np.zeros(n, np.int32)
        src[: len(pairs)], dst[: len(pairs)] = zip(*pairs)
        # Padding pairs copy block src[0] onto dst[0] again: idempotent.
        src[len(pairs):], dst[len(pairs):] = src[0], dst[0]
        key = ("copy", n)
        fn = self._compiled.get(key)
        if fn is None:
            spec = jax.ShapeDtypeStruct((n,), jnp.int32)
            pool = jax.ShapeDtypeStruct(self.kv_pool.shape, self.kv_pool.dtype, sharding=self.kv_pool.sharding)
            fn = jax.jit(_copy_blocks, donate_argnums=(0,)).lower(pool, spec, spec).compile()
            self._compiled[key] = fn
            self.num_compiles += 1
        self.kv_pool = fn(self.kv_pool, src, dst)

    def prepare_inputs(self, scheduled: Sequence, rows: Sequence[SamplingRow],
                       histories: Callable[[int], tuple[Sequence[int], Sequence[int]]] | None = None,
                       suppressed: Sequence[Sequence[int]] | None = None,
                       sample_indices: Sequence[int] | None = None):
        """Host arrays for one step (padded to its bucket) and its `StepShape`.

        `scheduled`: the ScheduledRequests in batch order; `rows[i]`: sampling parameters of
        scheduled[i]; `histories(i)` -> (prompt ids, output ids) for rows using penalties;
        `suppressed[i]`: token ids to forbid this step (min_tokens); `sample_indices[i]`: tokens
        already generated by that completion (for seeded sampling).
        """
        bs = self.block_size
        num_seqs = len(scheduled)
        lens = [len(r.token_ids) for r in scheduled]
        num_tokens = sum(lens)
        decode_only = num_tokens == num_seqs
        max_blocks = max(len(r.block_ids) for r in scheduled)
        penalty_len = 0
        if any(row.uses_penalties for row in rows):
            penalty_len = max(max(len(h[0]), len(h[1])) for h in map(histories, range(num_seqs))) or 1
        suppress_len = max((len(s) for s in suppressed), default=0) if suppressed else 0
        shape = self.step_shape(num_tokens, num_seqs, max_blocks, decode_only, penalty_len, suppress_len,
                                any(row.wants_logprobs for row in rows))
        t, s, w = shape.num_tokens, shape.num_seqs, shape.table_width

        token_ids = np.zeros(t, np.int32)
        positions = np.zeros(t, np.int32)
        slot_mapping = np.full(t, -1, np.int32)
        block_tables = np.zeros((s, w), np.int32)
        kv_lens = np.zeros(s, np.int32)
        qsl = np.full(s + 1, num_tokens, np.int32)
        logits_indices = np.zeros(s, np.int32)
        if decode_only:
            starts = [r.start_position for r in scheduled]
            token_ids[:num_seqs] = [r.token_ids[0] for r in scheduled]
            positions[:num_seqs] = starts
            slot_mapping[:num_seqs] = [r.block_ids[p // bs] * bs + p % bs for r, p in zip(scheduled, starts)]
            kv_lens[:num_seqs] = positions[:num_seqs] + 1
            qsl[:num_seqs] = np.arange(num_seqs)
            logits_indices[:num_seqs] = np.arange(num_seqs)
        else:
            offset = 0
            for i, (r, n) in enumerate(zip(scheduled, lens)):
                token_ids[offset:offset + n] = r.token_ids
                pos = np.arange(r.start_position, r.start_position + n, dtype=np.int32)
                positions[offset:offset + n] = pos
                table = np.asarray(r.block_ids, np.int32)
                slot_mapping[offset:offset + n] = table[pos // bs] * bs + pos % bs
                kv_lens[i] = r.start_position + n
                qsl[i] = offset
                offset += n
                logits_indices[i] = offset - 1
        for i, r in enumerate(scheduled):
            block_tables[i, : len(r.block_ids)] = r.block_ids
        inputs = dict(token_ids=token_ids, positions=positions, slot_mapping=slot_mapping,
                      block_tables=block_tables, kv_lens=kv_lens, query_start_loc=qsl,
                      logits_indices=logits_indices)
        return shape, inputs, self._sampling_tensors(shape, rows, histories, suppressed, sample_indices)

    def _sampling_tensors(self, shape: StepShape, rows, histories, suppressed, sample_indices) -> SamplingTensors:
        s, n = shape.num_seqs, len(rows)

        def col(values, dtype, fill):
            out = np.full(s, fill, dtype)
            out[:n] = values
            return out

        seeds = [row.seed for row in rows]
        prompt_tokens = np.full((s, shape.penalty_len), -1, np.int32)
        output_tokens = np.full((s, shape.penalty_len), -1, np.int32)
        if shape.penalty_len:
            for i, row in enumerate(rows):
                if row.uses_penalties:
                    prompt, output = histories(i)
                    prompt_tokens[i, : len(prompt)] = prompt
                    output_tokens[i, : len(output)] = output
        suppress = np.full((s, shape.suppress_len), -1, np.int32)
        if shape.suppress_len:
            for i, ids in enumerate(suppressed):
                suppress[i, : len(ids)] = ids
        return SamplingTensors(
            temperature=col([r.temperature for r in rows], np.float32, 0.0),
            top_k=col([r.top_k for r in rows], np.int32, 0),
            top_p=col([r.top_p for r in rows], np.float32, 1.0),
            min_p=col([r.min_p for r in rows], np.float32, 0.0),
            presence_penalty=col([r.presence_penalty for r in rows], np.float32, 0.0),
            frequency_penalty=col([r.frequency_penalty for r in rows], np.float32, 0.0),
            repetition_penalty=col([r.repetition_penalty for r in rows], np.float32, 1.0),
            seed=col([(x or 0) & 0xFFFFFFFF for x in seeds], np.uint32, 0),
            has_seed=col([x is not None for x in seeds], np.bool_, False),
            sample_index=col(sample_indices if sample_indices is not None else [0] * n, np.int32, 0),
            suppress_tokens=suppress, prompt_tokens=prompt_tokens, output_tokens=output_tokens)

    def execute(self, shape: StepShape, inputs: dict, sampling: SamplingTensors, num_seqs: int) -> StepResult:
        """Runs the compiled step for prepared inputs; returns the first `num_seqs` rows' results."""
        fn = self.compiled_step(shape)
        rng = np.array([self._seed, self._step_count & 0xFFFFFFFF], np.uint32)
        self._step_count += 1
        self.kv_pool, outs = fn(self.params, self.kv_pool, inputs, sampling, rng)
        token_ids, logprobs, ranks, top_ids, top_lp = jax.device_get(outs)
        top = shape.num_logprobs > 0
        return StepResult(token_ids=token_ids[:num_seqs], logprobs=logprobs[:num_seqs], ranks=ranks[:num_seqs],
                          top_ids=top_ids[:num_seqs] if top else None,
                          top_logprobs=top_lp[:num_seqs] if top else None)
