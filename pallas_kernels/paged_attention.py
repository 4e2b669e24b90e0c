"""Decode attention over the paged KV pool: one query token per sequence.

Flash-decoding: the grid is (sequence, kv head, k split); each program attends the G query
heads of one kv head (padded to >= 16 rows for Triton's dot) over one split of the context,
in KV tiles of `block_kv` tokens gathered through the block table, with an online softmax in
float32. Splits write a normalised partial output and its log-sum-exp; `combine_splits`
merges them in jnp.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import (
    MIN_DOT_DIM, AttentionDims, attend_kv_tile, check_tile, compiler_params, finish_rows,
    gather_pages, head_dim_lanes, init_softmax_state, next_pow2, pages_to_pool,
    reference_attention, resolve_interpret, store_index, validate_attention_args, validate_pages,
    validate_pool)
from pallas_kernels._compat import load, pl, store

# Auto k_splits: aim for this many programs in the grid, and no split under this many tokens.
_TARGET_PROGRAMS = 1024
_MIN_TOKENS_PER_SPLIT = 256
_MAX_K_SPLITS = 16


def paged_attention_kernel(
    q_ref,  # [num_seqs, num_q_heads, head_dim]
    kv_pool_ref,  # [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    block_tables_ref,  # i32[num_seqs, max_blocks_per_seq]
    kv_lens_ref,  # i32[num_seqs]
    o_ref,  # [k_splits, num_seqs, num_q_heads, head_dim]: normalised per split
    lse_ref,  # f32[k_splits, num_seqs, num_q_heads]: log-sum-exp per split (-inf: no key)
    *,
    layer: int,
    sm_scale: float,
    block_kv: int,
    tokens_per_split: int,
):
    seq, kv_head, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    _, num_q_heads, head_dim = q_ref.shape
    group = num_q_heads // kv_pool_ref.shape[2]
    rows = max(MIN_DOT_DIM, next_pow2(group))
    g = jnp.arange(rows, dtype=jnp.int32)
    row_ok = g < group  # bool[rows]: padding rows past the group are never stored
    heads = kv_head * group + jnp.minimum(g, group - 1)  # i32[rows]
    d_idx, d_ok = head_dim_lanes(head_dim)
    lanes_ok = row_ok[:, None] & d_ok[None, :]  # [rows, Dp]
    q = load(q_ref.at[seq, heads[:, None], d_idx[None, :]], mask=lanes_ok, other=0)

    kv_len = kv_lens_ref[seq]
    start = split * tokens_per_split
    end = jnp.minimum(start + tokens_per_split, kv_len)
    num_tiles = pl.cdiv(jnp.maximum(end - start, 0), block_kv)

    def body(i, state):
        return attend_kv_tile(state, q, kv_pool_ref, block_tables_ref, layer=layer, seq=seq,
                              kv_head=kv_head, kv_start=start + i * block_kv, kv_end=end,
                              block_kv=block_kv, sm_scale=sm_scale)

    state = lax.fori_loop(0, num_tiles, body, init_softmax_state(rows, d_idx.shape[0]))
    out, lse = finish_rows(state)
    heads_out = store_index(heads, row_ok, num_q_heads)
    d_out = store_index(d_idx, d_ok, head_dim)
    store(o_ref.at[split, seq, heads_out[:, None], d_out[None, :]], out.astype(o_ref.dtype),
          mask=lanes_ok)
    store(lse_ref.at[split, seq, heads_out], lse, mask=row_ok)


def _paged_attention_call(q, kv_pool, layer, block_tables, kv_lens, *, dims: AttentionDims,
                          sm_scale, block_kv, k_splits, num_warps, num_stages, interpret):
    """pallas_call over grid (num_seqs, num_kv_heads, k_splits); whole-array refs."""
    context = dims.max_blocks_per_seq * dims.block_size
    tokens_per_split = pl.cdiv(pl.cdiv(context, k_splits), block_kv) * block_kv
    k_splits = pl.cdiv(context, tokens_per_split)  # NOTE: no statically empty split
    partial_dtype = q.dtype if k_splits == 1 else jnp.float32
    kernel = functools.partial(paged_attention_kernel, layer=layer, sm_scale=sm_scale,
                               block_kv=block_kv, tokens_per_split=tokens_per_split)
    o, lse = pl.pallas_call(
        kernel,
        grid=(dims.num_seqs, dims.num_kv_heads, k_splits),
        out_shape=[
            jax.ShapeDtypeStruct((k_splits, *q.shape), partial_dtype),
            jax.ShapeDtypeStruct((k_splits, *q.shape[:2]), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=compiler_params(num_warps, num_stages),
        name=f"paged_attention_bkv{block_kv}_split{k_splits}",
    )(q, kv_pool, block_tables, kv_lens)
    if k_splits == 1:
        return o[0]
    return combine_splits(o, lse).astype(q.dtype)


def combine_splits(o, lse):
    """Merge flash-decoding partials: o f32[k, ...rows, D], lse f32[k, ...rows] -> f32[...rows, D]."""
    m = lse.max(axis=0)
    weights = jnp.exp(lse - jnp.where(jnp.isfinite(m), m, 0))  # 0 for splits that saw no key
    total = weights.sum(axis=0)
    merged = (weights[..., None] * o).sum(axis=0)
    return merged / jnp.where(total > 0, total, 1)[..., None]


def default_k_splits(num_seqs: int, num_kv_heads: int, context: int) -> int:
    """Enough splits to fill the GPU, never splits shorter than `_MIN_TOKENS_PER_SPLIT` tokens."""
    by_occupancy = pl.cdiv(_TARGET_PROGRAMS, max(1, num_seqs * num_kv_heads))
    by_length = max(1, context // _MIN_TOKENS_PER_SPLIT)
    return max(1, min(by_occupancy, by_length, _MAX_K_SPLITS))


_TUNING = ("block_kv", "k_splits", "num_warps", "num_stages")


@functools.partial(jax.jit, static_argnames=("layer", "sm_scale", "interpret") + _TUNING)
def paged_attention_from_pool(q, kv_pool, layer, block_tables, kv_lens, *, sm_scale=None,
                              interpret=None, block_kv=None, k_splits=None, num_warps=4,
                              num_stages=2):
    """Decode attention reading layer `layer` of the engine's KV pool (no copy of the layer).

    Args:
      q: [num_seqs, num_q_heads, head_dim], one query token per sequence.
      kv_pool: [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]; [:, 0] = K.
      layer: static int, the layer to read.
      block_tables: i32[num_seqs, max_blocks_per_seq]; entries must be valid block ids
        wherever a sequence has tokens (pad with 0).
      kv_lens: i32[num_seqs], cached tokens each query attends to (its own included);
        0 marks a padding row, whose output is 0.
      sm_scale: softmax scale, default head_dim ** -0.5.
      interpret: None = compiled on GPU, Pallas interpret mode elsewhere.
      block_kv: KV tokens per tile, a power of two >= 16 (default 64, 32 for head_dim 256).
      k_splits: context partitions (flash-decoding); default from batch size and context.
      num_warps, num_stages: Triton launch parameters.

    Returns:
      [num_seqs, num_q_heads, head_dim] in q's dtype.
    """
    dims = validate_attention_args(q, validate_pool(kv_pool, layer), kv_pool.dtype,
                                   block_tables, kv_lens, decode=True, kernel=True)
    if block_kv is None:
        block_kv = 64 if dims.head_dim_pad <= 128 else 32
    check_tile("block_kv", block_kv, MIN_DOT_DIM)
    context = dims.max_blocks_per_seq * dims.block_size
    if k_splits is None:
        k_splits = default_k_splits(dims.num_seqs, dims.num_kv_heads, context)
    if not isinstance(k_splits, int) or k_splits < 1:
        raise ValueError(f"k_splits must be an int >= 1, got {k_splits!r}")
    return _paged_attention_call(
        q, kv_pool, layer, block_tables, kv_lens, dims=dims,
        sm_scale=dims.softmax_scale(sm_scale),
        block_kv=block_kv, k_splits=k_splits, num_warps=num_warps, num_stages=num_stages,
        interpret=resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("sm_scale", "interpret") + _TUNING)
def paged_attention(q, k_pages, v_pages, block_tables, kv_lens, *, sm_scale=None,
                    interpret=None, block_kv=None, k_splits=None, num_warps=4, num_stages=2):
    """Decode attention over per-layer pages k_pages, v_pages [num_kv_heads, num_blocks,
    block_size, head_dim]; otherwise as `paged_attention_from_pool` (which it wraps, with the
    two arrays stacked into a one-layer pool)."""
    return paged_attention_from_pool(
        q, pages_to_pool(k_pages, v_pages), 0, block_tables, kv_lens, sm_scale=sm_scale,
        interpret=interpret, block_kv=block_kv, k_splits=k_splits, num_warps=num_warps,
        num_stages=num_stages)


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def paged_attention_reference(q, k_pages, v_pages, block_tables, kv_lens, *, sm_scale=None):
    """Plain-jnp decode attention (gather through the tables, dense masked softmax).

    Same arguments and result as `paged_attention`; any head_dim / block_size. The CPU fast
    path: pass `kv_pool[layer, 0]`, `kv_pool[layer, 1]` inside jit, XLA gathers from the pool
    without copying the layer.
    """
    validate_pages(k_pages, v_pages)
    dims = validate_attention_args(q, k_pages.shape, k_pages.dtype, block_tables, kv_lens,
                                   decode=True, kernel=False)
    scale = dims.softmax_scale(sm_scale)
    k = gather_pages(k_pages, block_tables)  # [num_seqs, context, num_kv_heads, head_dim]
    v = gather_pages(v_pages, block_tables)
    key_valid = jnp.arange(k.shape[1])[None, :] < kv_lens[:, None]  # [num_seqs, context]
    out = reference_attention(q[:, None], k, v, key_valid, key_valid[:, None], scale)
    return out[:, 0].astype(q.dtype)
