"""The functions that run on the device: one engine step, and sharded copy-on-write block copies.

`engine_step` is jitted once per `StepShape` (the runner compiles it ahead of time with the KV
pool donated): it feeds the previous step's sampled tokens into this step's inputs where the
host does not know them yet (asynchronous scheduling), runs the model over the packed tokens
(writing their K/V into the pool), and samples one token per row.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

import pallas_kernels as pk
from models.attention import PagedAttentionMetadata, PagedKVCache
from models.sharding import TP_AXIS, kv_pool_sharding, replicated, shard_map
from pagedjax.config import MAX_LOGPROBS
from pagedjax.sampler import SamplingTensors, sample

# Host inputs of a step (all int32), with their shapes in terms of the StepShape's T, S, W.
STEP_INPUTS = dict(
    token_ids=("T",),  # the packed tokens; a fed row's first token is replaced on the device
    positions=("T",),
    slot_mapping=("T",),  # block_id * block_size + offset; -1 = padding
    block_tables=("S", "W"),
    kv_lens=("S",),  # tokens in the cache after this step, per row; 0 = padding
    query_start_loc=("S+1",),  # row s owns tokens [qsl[s], qsl[s+1])
    logits_indices=("S",),  # the packed token whose logits each sampler row samples
    feed_index=("S",),  # the previous step's carry entry holding this row's first token; -1 = known
    sample_index=("S",),  # samples each row's completion drew before (seeded streams)
    rng=(2,),  # (engine seed, step counter) as int32 bits: this step's key is derived on device
)
PROMPT_LOGPROB_INPUTS = dict(next_token_ids=("T",))  # only in prompt-logprob steps


def input_layout(shape) -> tuple[tuple[str, int, tuple[int, ...]], ...]:
    """Where each host input sits in the step's one packed int32 buffer: (name, offset, dims).
    One transfer per step instead of one per input."""
    sizes = {"T": shape.num_tokens, "S": shape.num_seqs, "S+1": shape.num_seqs + 1, "W": shape.table_width}
    specs = {**STEP_INPUTS, **(PROMPT_LOGPROB_INPUTS if shape.prompt_logprobs else {})}
    layout, offset = [], 0
    for name, dims in specs.items():
        dims = tuple(sizes.get(d, d) for d in dims)
        layout.append((name, offset, dims))
        offset += int(np.prod(dims))
    return tuple(layout)


def packed_size(layout) -> int:
    name, offset, dims = layout[-1]
    return offset + int(np.prod(dims))


def pack_inputs(layout, inputs: dict) -> np.ndarray:
    """The host inputs of a step as one int32 buffer (see `input_layout`)."""
    return np.concatenate([np.asarray(inputs[name], np.int32).ravel() for name, _, _ in layout])


def unpack_inputs(layout, packed) -> dict:
    """The inverse of `pack_inputs`, inside the jitted step (static slices)."""
    return {name: packed[offset: offset + int(np.prod(dims))].reshape(dims) for name, offset, dims in layout}


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


def _feed(token_ids, query_start_loc, feed_index, carry):
    """Replaces the first token of each fed row (feed_index >= 0) by carry[feed_index]."""
    num_tokens = token_ids.shape[0]
    rows = feed_index.shape[0]
    where = jnp.where(feed_index >= 0, query_start_loc[:rows], num_tokens)  # out of bounds: dropped
    return token_ids.at[where].set(carry[jnp.maximum(feed_index, 0)], mode="drop")


def engine_step(graphdef, backend: str, mesh: Mesh | None, decode_only: bool, num_logprobs: int,
                prompt_logprobs: bool, carry_len: int, layout: tuple,
                params, kv_pool, packed, sampling: SamplingTensors, carry):
    """One engine step on device.

    packed i32[...]: the host inputs (`input_layout`). sampling: the rows' sampling tensors (their
    `sample_index` comes from `packed`). carry i32[carry_len]: the previous step's sampled tokens
    of its first rows (what `feed_index` points into). Returns (kv_pool, carry, sampler outputs).
    """
    model = nnx.merge(graphdef, params)
    inputs = unpack_inputs(layout, packed)
    rng = jax.lax.bitcast_convert_type(inputs["rng"], jnp.uint32)
    key = jax.random.fold_in(jax.random.key(rng[0]), rng[1])
    sampling = dataclasses.replace(sampling, sample_index=inputs["sample_index"])
    token_ids = _feed(inputs["token_ids"], inputs["query_start_loc"], inputs["feed_index"], carry)
    metadata = PagedAttentionMetadata(
        slot_mapping=inputs["slot_mapping"], block_tables=inputs["block_tables"], kv_lens=inputs["kv_lens"],
        query_start_loc=inputs["query_start_loc"], backend=backend, decode_only=decode_only, mesh=mesh)
    hidden, cache = model(token_ids, inputs["positions"], PagedKVCache(kv_pool, metadata))
    logits = model.compute_logits(hidden[inputs["logits_indices"]])  # f32[S, V]
    if sampling.output_tokens.shape[1]:  # penalties: a fed row's pending token joins its history
        fed = jnp.where(inputs["feed_index"] >= 0, carry[jnp.maximum(inputs["feed_index"], 0)], -1)
        fed = jnp.pad(fed, (0, logits.shape[0] - fed.shape[0]), constant_values=-1)
        sampling = sampling.replace_pending(fed)
    outs = sample(logits, sampling, key, num_logprobs=num_logprobs)
    if prompt_logprobs:  # next_token_ids i32[T]: the token each packed position predicts
        outs = (*outs, _token_logprobs(model, hidden, inputs["next_token_ids"], MAX_LOGPROBS))
    rows = min(carry_len, outs[0].shape[0])
    new_carry = jnp.zeros((carry_len,), jnp.int32).at[:rows].set(outs[0][:rows])
    if mesh is not None:  # results whole on every device (each host reads its own copy); pool stays split
        outs, new_carry = jax.lax.with_sharding_constraint((outs, new_carry), replicated(mesh))
        return jax.lax.with_sharding_constraint(cache.kv_pool, kv_pool_sharding(mesh)), new_carry, outs
    return cache.kv_pool, new_carry, outs


def step_function(graphdef, backend: str, mesh: Mesh | None, shape, carry_len: int):
    """`engine_step` bound to a shape's static settings (what the runner jits)."""
    return functools.partial(engine_step, graphdef, backend, mesh, shape.decode_only, shape.num_logprobs,
                             shape.prompt_logprobs, carry_len, input_layout(shape))


def sharded_copy_blocks(mesh: Mesh, kv_pool, src, dst):
    """Copy-on-write (`pallas_kernels.copy_blocks`: blocks dst become copies of blocks src, scales
    included) on each device's slice of the kv-head axis (no data crosses devices)."""
    pool_spec, rep = PartitionSpec(None, None, TP_AXIS), PartitionSpec()
    return shard_map(pk.copy_blocks, mesh, in_specs=(pool_spec, rep, rep), out_specs=pool_spec)(kv_pool, src, dst)
