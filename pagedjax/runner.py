"""The model runner: pads each scheduled step to a bucket and runs one jitted step per bucket.

The KV pool `[num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]` is allocated
once and donated to every step, which writes this step's K/V into it in place and attends
through the block tables. Shapes inside jit are static: a step is padded to a bucket
(`StepShape`) from a short fixed list, each bucket is compiled once (ahead of time, counted in
`num_compiles`), and `precompile()` can build them all up front.

Tensor parallelism (`mesh` given): parameters arrive sharded (models/sharding.py), the pool is
sharded on its kv-head axis, the host inputs of a step are replicated, and attention runs
under `shard_map` (models/attention.py). Without a mesh nothing of that is traced.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from models.attention import PagedAttentionMetadata, PagedKVCache
from models.config import ModelConfig
from models.sharding import TP_AXIS, kv_pool_sharding, pool_kv_heads, replicated, shard_map
from pagedjax.sampler import MAX_LOGPROBS, SamplingTensors, sample


def pow2_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `largest`, with `largest` itself as the last bucket."""
    out, b = [], smallest
    while b < largest:
        out.append(b)
        b *= 2
    out.append(largest)
    return tuple(out)


def pow2_at_least(n: int, minimum: int) -> int:
    """The smallest power of two >= n and >= minimum (open-ended buckets of rare step variants)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


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
    prompt_logprobs: bool = False  # also logprobs of every packed token's next token


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
    # per packed token (prompt logprobs): top ids i32[T, K], top logprobs f32[T, K], the next
    # token's logprob f32[T] and rank i32[T]; None unless the step computed them
    prompt: tuple | None = None

    @functools.cached_property
    def logprob_list(self) -> list[float]:
        """`logprobs` as Python floats (one conversion for the whole batch)."""
        return self.logprobs.tolist()


@dataclasses.dataclass
class SampleRows:
    """The sampler's rows of one step, as parallel lists (built by the engine)."""

    seq_index: list[int]  # the scheduled sequence whose last token's logits the row samples
    params: list[SamplingRow]
    sample_index: list[int]  # tokens the row's completion has generated so far (seeded streams)
    suppress: list[tuple[int, ...]] | None = None  # token ids forbidden this step (min_tokens)
    histories: list | None = None  # per row (prompt ids, output ids) or None; only with penalties


def _token_logprobs(model, hidden, next_ids, k: int):
    """Logprobs of each packed token's next token, in chunks so [chunk, vocab] is all that lives:
    (top ids i32[T, k], top logprobs f32[T, k], next-token logprob f32[T], its rank i32[T])."""
    num_tokens = hidden.shape[0]
    chunk = min(num_tokens, 64)

    def one(args):
        h, nxt = args  # [C, H], i32[C]
        lp = jax.nn.log_softmax(model.compute_logits(h), axis=-1)  # f32[C, V]
        top_lp, top_ids = jax.lax.top_k(lp, k)
        target = jnp.take_along_axis(lp, nxt[:, None], axis=-1)[:, 0]
        rank = jnp.sum(lp > target[:, None], axis=-1).astype(jnp.int32) + 1
        return top_ids.astype(jnp.int32), top_lp, target, rank

    outs = jax.lax.map(one, (hidden.reshape(num_tokens // chunk, chunk, -1), next_ids.reshape(-1, chunk)))
    return tuple(o.reshape(num_tokens, *o.shape[2:]) for o in outs)


def _step(graphdef, backend: str, mesh: Mesh | None, decode_only: bool, num_logprobs: int, prompt_logprobs: bool,
          params, kv_pool, inputs: dict, sampling: SamplingTensors, rng):
    """One engine step on device: forward over the packed tokens, then sample one token per row.

    `rng` u32[2] = (engine seed, step counter): this step's key is derived on device, saving a
    host-side dispatch per step.
    """
    model = nnx.merge(graphdef, params)
    key = jax.random.fold_in(jax.random.key(rng[0]), rng[1])
    metadata = PagedAttentionMetadata(
        slot_mapping=inputs["slot_mapping"], block_tables=inputs["block_tables"], kv_lens=inputs["kv_lens"],
        query_start_loc=inputs["query_start_loc"], backend=backend, decode_only=decode_only, mesh=mesh)
    hidden, cache = model(inputs["token_ids"], inputs["positions"], PagedKVCache(kv_pool, metadata))
    logits = model.compute_logits(hidden[inputs["logits_indices"]])  # f32[S, V]
    outs = sample(logits, sampling, key, num_logprobs=num_logprobs)
    if prompt_logprobs:
        outs = (*outs, _token_logprobs(model, hidden, inputs["next_token_ids"], MAX_LOGPROBS))
    if mesh is not None:  # results whole on every device (each host reads its own copy); pool stays split
        outs = jax.lax.with_sharding_constraint(outs, replicated(mesh))
        return jax.lax.with_sharding_constraint(cache.kv_pool, kv_pool_sharding(mesh)), outs
    return cache.kv_pool, outs


def _copy_blocks(kv_pool, src, dst):
    """kv_pool[:, :, :, dst] = kv_pool[:, :, :, src] (copy-on-write), in place when donated."""
    return kv_pool.at[:, :, :, dst].set(kv_pool[:, :, :, src])


def _sharded_copy_blocks(mesh: Mesh, kv_pool, src, dst):
    """`_copy_blocks` on each device's slice of the kv-head axis (no data crosses devices)."""
    pool_spec, rep = PartitionSpec(None, None, TP_AXIS), PartitionSpec()
    return shard_map(_copy_blocks, mesh, in_specs=(pool_spec, rep, rep), out_specs=pool_spec)(kv_pool, src, dst)


class ModelRunner:
    """Owns the parameters, the KV pool and the compiled steps; executes `SchedulerOutput`s."""

    def __init__(self, graphdef, params, config: ModelConfig, *, num_blocks: int, block_size: int,
                 max_model_len: int, max_num_seqs: int, max_num_batched_tokens: int, backend: str,
                 kv_dtype, seed: int = 0, mesh: Mesh | None = None):
        """`mesh`: the tensor-parallel mesh (`tp` axis) the parameters are sharded over; None = one device."""
        self.graphdef, self.params, self.config = graphdef, params, config
        self.mesh = mesh
        self.block_size, self.num_blocks, self.backend = block_size, num_blocks, backend
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self.max_num_seqs = max_num_seqs
        self.token_buckets = pow2_buckets(16, max(16, max_num_batched_tokens))
        self.seq_buckets = pow2_buckets(min(8, max_num_seqs), max_num_seqs)
        # The Pallas kernels loop to each sequence's length, so one full-width table costs nothing;
        # the jnp reference gathers the whole table, so it gets width buckets.
        self.width_buckets = ((self.max_blocks_per_seq,) if backend == "pallas"
                              else pow2_buckets(min(4, self.max_blocks_per_seq), self.max_blocks_per_seq))
        tp = 1 if mesh is None else mesh.shape[TP_AXIS]
        self._pool_shape = (config.num_layers, 2, pool_kv_heads(config, tp), num_blocks, block_size, config.head_dim)
        self._kv_dtype, self.mesh = kv_dtype, mesh
        self._host_sharding = None if mesh is None else replicated(mesh)
        self.kv_pool = self.allocate_kv_pool()
        self._seed = seed & 0xFFFFFFFF
        self._step_count = 0
        self._compiled: dict = {}
        self._table_cache = None  # (request ids, block tables, table lengths, last blocks) of the last step
        self._sampling_cache = None  # ((S, row identities), parameter columns, rows) of the last step
        self.num_compiles = 0
        self.compile_seconds = 0.0

    def allocate_kv_pool(self):
        """A zeroed KV pool `[L, 2, Hkv, num_blocks, block_size, D]` (with tp: the kv-head axis
        sharded, `Hkv / tp` heads created in place on each device)."""
        shape, dtype = self._pool_shape, self._kv_dtype
        if self.mesh is None:
            return jnp.zeros(shape, dtype)
        return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=kv_pool_sharding(self.mesh))()

    def reset_after_failure(self) -> None:
        """After a failed step: a fresh pool if the donated one was lost, and no cached host rows."""
        if self.kv_pool.is_deleted():
            self.kv_pool = self.allocate_kv_pool()
        self._table_cache = self._sampling_cache = None

    # ----------------------------------------------------------------------------- shapes

    def _seq_bucket(self, n: int) -> int:
        # beyond max_num_seqs only when forks add sampler rows: rare, compiled on demand
        return pick_bucket(self.seq_buckets, n) if n <= self.seq_buckets[-1] else pow2_at_least(n, 1)

    def step_shape(self, num_tokens: int, num_seqs: int, max_blocks: int, decode_only: bool,
                   penalty_len: int = 0, suppress_len: int = 0, logprobs: bool = False,
                   prompt_logprobs: bool = False) -> StepShape:
        """The bucket of a step with `num_tokens` tokens and `num_seqs` rows (sequences or sampler rows)."""
        if decode_only:
            seqs = self._seq_bucket(num_seqs)
            tokens = seqs
        else:
            # S depends on T alone (S >= num_seqs since every sequence has a token): fewer buckets.
            tokens = pick_bucket(self.token_buckets, num_tokens)
            seqs = self._seq_bucket(max(min(tokens, self.max_num_seqs), num_seqs))
        return StepShape(
            num_tokens=tokens, num_seqs=seqs, table_width=pick_bucket(self.width_buckets, max(max_blocks, 1)),
            decode_only=decode_only,
            penalty_len=pow2_at_least(penalty_len, 16) if penalty_len else 0,
            suppress_len=pow2_at_least(suppress_len, 4) if suppress_len else 0,
            num_logprobs=MAX_LOGPROBS if logprobs else 0, prompt_logprobs=prompt_logprobs)

    def all_step_shapes(self) -> list[StepShape]:
        """Every plain-sampling bucket (no penalties, suppression or logprobs): what warm-up compiles."""
        shapes = []
        for w in self.width_buckets:
            for s in self.seq_buckets:
                shapes.append(self.step_shape(s, s, w, True))
            for t in self.token_buckets:
                shapes.append(self.step_shape(t, 1, w, False))
        return list(dict.fromkeys(shapes))

    def _host_arg(self, dims: tuple, dtype) -> jax.ShapeDtypeStruct:
        """A step input sent from the host (replicated over the mesh, if any)."""
        return jax.ShapeDtypeStruct(dims, dtype, sharding=self._host_sharding)

    def _abstract_args(self, shape: StepShape):
        t, s, w = shape.num_tokens, shape.num_seqs, shape.table_width
        i32 = lambda *dims: self._host_arg(dims, jnp.int32)  # noqa: E731
        f32 = lambda *dims: self._host_arg(dims, jnp.float32)  # noqa: E731
        inputs = dict(token_ids=i32(t), positions=i32(t), slot_mapping=i32(t), block_tables=i32(s, w),
                      kv_lens=i32(s), query_start_loc=i32(s + 1), logits_indices=i32(s))
        if shape.prompt_logprobs:
            inputs["next_token_ids"] = i32(t)
        sampling = SamplingTensors(
            temperature=f32(s), top_k=i32(s), top_p=f32(s), min_p=f32(s), presence_penalty=f32(s),
            frequency_penalty=f32(s), repetition_penalty=f32(s), seed=self._host_arg((s,), jnp.uint32),
            has_seed=self._host_arg((s,), jnp.bool_), sample_index=i32(s),
            suppress_tokens=i32(s, shape.suppress_len), prompt_tokens=i32(s, shape.penalty_len),
            output_tokens=i32(s, shape.penalty_len))
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.params)
        pool = jax.ShapeDtypeStruct(self.kv_pool.shape, self.kv_pool.dtype, sharding=self.kv_pool.sharding)
        return params, pool, inputs, sampling, self._host_arg((2,), jnp.uint32)

    def compiled_step(self, shape: StepShape):
        """The compiled step for `shape` (compiling it on first use)."""
        fn = self._compiled.get(shape)
        if fn is None:
            start = time.perf_counter()
            jitted = jax.jit(functools.partial(_step, self.graphdef, self.backend, self.mesh, shape.decode_only,
                                               shape.num_logprobs, shape.prompt_logprobs), donate_argnums=(1,))
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
        """The compiled step's memory analysis: temporaries against the KV pool's size (both per
        device under tensor parallelism)."""
        analysis = self.compiled_step(shape).memory_analysis()
        return dict(temp_bytes=int(analysis.temp_size_in_bytes),
                    argument_bytes=int(analysis.argument_size_in_bytes),
                    kv_pool_bytes=int(self.kv_pool.addressable_shards[0].data.nbytes))

    # ----------------------------------------------------------------------------- execution

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Applies copy-on-write block copies (src, dst) to the pool."""
        if not pairs:
            return
        n = pow2_at_least(len(pairs), 4)
        src = np.zeros(n, np.int32)
        dst = np.zeros(n, np.int32)
        src[: len(pairs)], dst[: len(pairs)] = zip(*pairs)
        # Padding pairs copy block src[0] onto dst[0] again: idempotent.
        src[len(pairs):], dst[len(pairs):] = src[0], dst[0]
        key = ("copy", n)
        fn = self._compiled.get(key)
        if fn is None:
            spec = self._host_arg((n,), jnp.int32)
            pool = jax.ShapeDtypeStruct(self.kv_pool.shape, self.kv_pool.dtype, sharding=self.kv_pool.sharding)
            copy = _copy_blocks if self.mesh is None else functools.partial(_sharded_copy_blocks, self.mesh)
            fn = jax.jit(copy, donate_argnums=(0,)).lower(pool, spec, spec).compile()
            self._compiled[key] = fn
            self.num_compiles += 1
        self.kv_pool = fn(self.kv_pool, src, dst)

    def prepare_inputs(self, scheduled: Sequence, rows: "SampleRows",
                       next_after_chunk: Sequence[int] | None = None, any_logprobs: bool | None = None):
        """Host arrays for one step (padded to its bucket) and its `StepShape`.

        `scheduled`: the ScheduledRequests in batch order; `rows`: the sampler's rows (normally
        one per scheduled sequence, plus extra rows where a request forks into several samples).
        `next_after_chunk[i]`: the token following scheduled[i]'s tokens (0 if none yet); given,
        the step also returns every token's next-token logprobs (prompt logprobs).
        `any_logprobs`: whether some row wants logprobs (computed from `rows` when None).

        NOTE: this runs every step on the host; per-sequence Python loops are kept to a few
        (C-level `zip`/`map` transpositions, caches of what did not change since the last step).
        """
        prompt_logprobs = next_after_chunk is not None
        bs = self.block_size
        ids, token_lists, starts, tables, _ = zip(*scheduled)
        num_seqs = len(ids)
        num_rows = len(rows.params)
        lens = list(map(len, token_lists))
        num_tokens = sum(lens)
        decode_only = num_tokens == num_seqs and not prompt_logprobs
        table_lens = list(map(len, tables))
        penalty_len = 0
        if rows.histories is not None:
            penalty_len = max((max(len(h[0]), len(h[1])) for h in rows.histories if h is not None), default=0) or 1
        suppress_len = max((len(x) for x in rows.suppress), default=0) if rows.suppress else 0
        if any_logprobs is None:
            any_logprobs = any(p.wants_logprobs for p in rows.params)
        shape = self.step_shape(num_tokens, max(num_seqs, num_rows), max(table_lens), decode_only, penalty_len,
                                suppress_len, any_logprobs, prompt_logprobs)
        t, s, w = shape.num_tokens, shape.num_seqs, shape.table_width

        block_tables = np.zeros((s, w), np.int32)
        self._fill_block_tables(block_tables, ids, tables, table_lens)
        token_ids = np.zeros(t, np.int32)
        positions = np.zeros(t, np.int32)
        slot_mapping = np.full(t, -1, np.int32)
        kv_lens = np.zeros(s, np.int32)
        qsl = np.full(s + 1, num_tokens, np.int32)
        if decode_only:
            pos = np.fromiter(starts, np.int32, num_seqs)
            token_ids[:num_seqs] = [toks[0] for toks in token_lists]
            positions[:num_seqs] = pos
            slot_mapping[:num_seqs] = block_tables[np.arange(num_seqs), pos // bs] * bs + pos % bs
            kv_lens[:num_seqs] = pos + 1
            qsl[:num_seqs] = np.arange(num_seqs)
            last_index = np.arange(num_seqs, dtype=np.int32)  # each sequence's last packed token
        else:
            token_ids[:num_tokens] = np.fromiter(itertools.chain.from_iterable(token_lists), np.int32, num_tokens)
            seq_of_token = np.repeat(np.arange(num_seqs), lens)
            begin = np.cumsum(lens) - lens  # [num_seqs] packed offset of each sequence
            pos = np.fromiter(starts, np.int32, num_seqs)[seq_of_token] + np.arange(num_tokens) - begin[seq_of_token]
            positions[:num_tokens] = pos
            slot_mapping[:num_tokens] = block_tables[seq_of_token, pos // bs] * bs + pos % bs
            kv_lens[:num_seqs] = pos[begin + np.asarray(lens) - 1] + 1
            qsl[:num_seqs] = begin
            last_index = (begin + np.asarray(lens) - 1).astype(np.int32)
        logits_indices = np.zeros(s, np.int32)
        logits_indices[:num_rows] = last_index[rows.seq_index] if num_rows != num_seqs else last_index
        inputs = dict(token_ids=token_ids, positions=positions, slot_mapping=slot_mapping,
                      block_tables=block_tables, kv_lens=kv_lens, query_start_loc=qsl,
                      logits_indices=logits_indices)
        if prompt_logprobs:  # the token each position predicts: the next one of its sequence
            targets = np.zeros(t, np.int32)
            targets[: num_tokens - 1] = token_ids[1:num_tokens]
            targets[last_index] = next_after_chunk
            inputs["next_token_ids"] = targets
        return shape, inputs, self._sampling_tensors(shape, rows)

    def _fill_block_tables(self, out: np.ndarray, ids: tuple, tables: tuple, table_lens: list) -> None:
        """Writes each sequence's block table into `out` [S, W], reusing the previous step's rows.

        Consecutive decode steps mostly schedule the same requests with the same tables. A table
        only changes by growing (a new block) or by copy-on-write of the block being written,
        which is always its last one; so when the request order is unchanged, a row whose
        length and last block are unchanged is copied from the previous step's array.
        NOTE: preempted or finished requests change the order, so the cache is not used then.
        """
        lasts = list(map(operator.itemgetter(-1), tables))
        prev = self._table_cache
        if prev is not None and prev[0] == ids and prev[1].shape == out.shape:
            _, prev_out, prev_lens, prev_lasts = prev
            out[:] = prev_out
            if prev_lens != table_lens or prev_lasts != lasts:
                for i, (a, b, c, d) in enumerate(zip(table_lens, prev_lens, lasts, prev_lasts)):
                    if a != b or c != d:
                        out[i, :a] = tables[i]
        else:
            for i, table in enumerate(tables):
                out[i, : len(table)] = table
        self._table_cache = (ids, out.copy(), table_lens, lasts)

    def _sampling_tensors(self, shape: StepShape, rows: "SampleRows") -> SamplingTensors:
        s, n = shape.num_seqs, len(rows.params)
        params = rows.params
        key = (s, tuple(map(id, params)))
        cached = self._sampling_cache
        if cached is not None and cached[0] == key:
            columns = cached[1]
        else:
            def col(values, dtype, fill):
                out = np.full(s, fill, dtype)
                out[:n] = values
                return out

            seeds = [row.seed for row in params]
            columns = dict(
                temperature=col([r.temperature for r in params], np.float32, 0.0),
                top_k=col([r.top_k for r in params], np.int32, 0),
                top_p=col([r.top_p for r in params], np.float32, 1.0),
                min_p=col([r.min_p for r in params], np.float32, 0.0),
                presence_penalty=col([r.presence_penalty for r in params], np.float32, 0.0),
                frequency_penalty=col([r.frequency_penalty for r in params], np.float32, 0.0),
                repetition_penalty=col([r.repetition_penalty for r in params], np.float32, 1.0),
                seed=col([(x or 0) & 0xFFFFFFFF for x in seeds], np.uint32, 0),
                has_seed=col([x is not None for x in seeds], np.bool_, False))
            # NOTE: keyed by the SamplingRow objects' identities, which the engine keeps alive
            # (and constant) for the life of their completions.
            self._sampling_cache = (key, columns, params)
        sample_index = np.zeros(s, np.int32)
        sample_index[:n] = rows.sample_index
        prompt_tokens = np.full((s, shape.penalty_len), -1, np.int32)
        output_tokens = np.full((s, shape.penalty_len), -1, np.int32)
        if shape.penalty_len:
            for i, history in enumerate(rows.histories):
                if history is not None:
                    prompt, output = history
                    prompt_tokens[i, : len(prompt)] = prompt
                    output_tokens[i, : len(output)] = output
        suppress = np.full((s, shape.suppress_len), -1, np.int32)
        if shape.suppress_len:
            for i, ids in enumerate(rows.suppress):
                suppress[i, : len(ids)] = ids
        return SamplingTensors(**columns, sample_index=sample_index, suppress_tokens=suppress,
                               prompt_tokens=prompt_tokens, output_tokens=output_tokens)

    def execute(self, shape: StepShape, inputs: dict, sampling: SamplingTensors, num_rows: int,
                num_tokens: int = 0) -> StepResult:
        """Runs the compiled step for prepared inputs; returns the first `num_rows` sampler rows'
        results (and `num_tokens` tokens' prompt logprobs when the shape computes them)."""
        fn = self.compiled_step(shape)
        rng = np.array([self._seed, self._step_count & 0xFFFFFFFF], np.uint32)
        self._step_count += 1
        self.kv_pool, outs = fn(self.params, self.kv_pool, inputs, sampling, rng)
        outs = jax.device_get(outs)
        token_ids, logprobs, ranks, top_ids, top_lp = outs[:5]
        top = shape.num_logprobs > 0
        result = StepResult(token_ids=token_ids[:num_rows], logprobs=logprobs[:num_rows], ranks=ranks[:num_rows],
                            top_ids=top_ids[:num_rows] if top else None,
                            top_logprobs=top_lp[:num_rows] if top else None)
        if shape.prompt_logprobs:
            p_ids, p_lp, p_target, p_rank = outs[5]
            result.prompt = (p_ids[:num_tokens], p_lp[:num_tokens], p_target[:num_tokens], p_rank[:num_tokens])
        return result
