"""Decode attention over the paged KV pool: one query token per sequence.

Flash-decoding: the grid is (sequence, kv head, k split); each program attends the G query
heads of one kv head (padded to >= 16 rows for Triton's dot) over one split of the keys the
query can see, in KV tiles of `block_kv` tokens gathered through the block table, with an
online softmax in float32. Splits write a normalised partial output and its log-sum-exp;
`combine_splits` merges them in jnp (adding the sinks, if any, to the denominator).

Sliding window: a sequence's keys start at the tile holding its window's first key, and the
splits partition that span (at most window + block_kv - 1 tokens), not the context: the
cost, grid included, follows the window.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import tiles
from pallas_kernels._common import (
    MIN_DOT_DIM, AttentionDims, check_tile, compiler_params, next_pow2, pages_to_layer,
    pages_to_pool, resolve_interpret, resolve_spec, validate_attention_args,
    validate_head_arrays, validate_pool)
from pallas_kernels._compat import load, pl, store
from pallas_kernels._reference import paged_reference
from pallas_kernels._tile import (
    PoolRefs, TileMath, attend_kv_tile, finish_rows, head_dim_lanes, init_softmax_state,
    load_head_values, per_head_scales, store_index, window_start)
from pallas_kernels.kv_pool import KVPool, LayerKV

# Auto k_splits: aim for this many programs in the grid, and no split under this many tokens.
_TARGET_PROGRAMS = 1024
_MIN_TOKENS_PER_SPLIT = 256
_MAX_K_SPLITS = 16


def paged_attention_kernel(
    q_ref,  # [num_seqs, num_q_heads, head_dim]
    kv_ref,  # [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim] (storage dtype)
    scales_ref,  # f32[L, 2, Hkv] (fp8) | bf16[L, 2, Hkv, num_blocks, block_size] (int8) | unused
    block_tables_ref,  # i32[num_seqs, max_blocks_per_seq]
    kv_lens_ref,  # i32[num_seqs]
    slopes_ref,  # f32[num_q_heads] ALiBi slopes (read only with spec.use_alibi)
    sinks_ref,  # f32[num_q_heads] sink logits (read only with spec.use_sinks and one split)
    o_ref,  # [k_splits, num_seqs, num_q_heads, head_dim]: normalised per split
    lse_ref,  # f32[k_splits, num_seqs, num_q_heads]: log-sum-exp per split (-inf: no key)
    *,
    layer: int,
    math: TileMath,
    block_kv: int,
    tokens_per_split: int,
    apply_sinks: bool,
):
    seq, kv_head, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    _, num_q_heads, head_dim = q_ref.shape
    group = num_q_heads // kv_ref.shape[2]
    rows = max(MIN_DOT_DIM, next_pow2(group))
    g = jnp.arange(rows, dtype=jnp.int32)
    row_ok = g < group  # bool[rows]: padding rows past the group are never stored
    heads = kv_head * group + jnp.minimum(g, group - 1)  # i32[rows]
    d_idx, d_ok = head_dim_lanes(head_dim)
    lanes_ok = row_ok[:, None] & d_ok[None, :]  # [rows, Dp]
    q = load(q_ref.at[seq, heads[:, None], d_idx[None, :]], mask=lanes_ok, other=0)

    kv_len = kv_lens_ref[seq]
    query_pos = kv_len - 1
    key_lo = window_start(query_pos, math.spec)
    start = (key_lo // block_kv) * block_kv + split * tokens_per_split
    end = jnp.minimum(start + tokens_per_split, kv_len)
    num_tiles = pl.cdiv(jnp.maximum(end - start, 0), block_kv)
    pool = PoolRefs(kv_ref, scales_ref, block_tables_ref, layer)
    k_scale, v_scale = per_head_scales(pool, math, kv_head)
    slopes = load_head_values(slopes_ref, heads, row_ok) if math.spec.use_alibi else None

    def body(i, state):
        return attend_kv_tile(state, q, pool, math=math, seq=seq, kv_head=kv_head,
                              kv_start=start + i * block_kv, key_lo=key_lo, kv_end=end,
                              block_kv=block_kv, query_pos=query_pos, causal=False,
                              k_scale=k_scale, slopes=slopes)

    state = lax.fori_loop(0, num_tiles, body, init_softmax_state(rows, d_idx.shape[0]))
    sinks = load_head_values(sinks_ref, heads, row_ok) if apply_sinks else None
    out, lse = finish_rows(state, v_scale=v_scale, sinks=sinks)
    heads_out = store_index(heads, row_ok, num_q_heads)
    d_out = store_index(d_idx, d_ok, head_dim)
    store(o_ref.at[split, seq, heads_out[:, None], d_out[None, :]], out.astype(o_ref.dtype),
          mask=lanes_ok)
    store(lse_ref.at[split, seq, heads_out], lse, mask=row_ok)


def key_span(context: int, spec, block_kv: int) -> int:
    """Most keys one decode query reads: the context, or its window's tiles."""
    if spec.sliding_window is None:
        return context
    return min(context, spec.sliding_window + block_kv - 1)


def _paged_attention_call(q, pool: KVPool, layer, block_tables, kv_lens, slopes, sinks, *,
                          dims: AttentionDims, math: TileMath, block_kv, k_splits, num_warps,
                          num_stages, interpret):
    """pallas_call over grid (num_seqs, num_kv_heads, k_splits); whole-array refs."""
    span = key_span(dims.max_blocks_per_seq * dims.block_size, math.spec, block_kv)
    tokens_per_split = pl.cdiv(pl.cdiv(span, k_splits), block_kv) * block_kv
    k_splits = pl.cdiv(span, tokens_per_split)  # NOTE: no statically empty split
    partial_dtype = q.dtype if k_splits == 1 else jnp.float32
    apply_sinks = math.spec.use_sinks and k_splits == 1
    kernel = functools.partial(paged_attention_kernel, layer=layer, math=math,
                               block_kv=block_kv, tokens_per_split=tokens_per_split,
                               apply_sinks=apply_sinks)
    unused = jnp.zeros((1,), jnp.float32)
    o, lse = pl.pallas_call(
        kernel,
        grid=(dims.num_seqs, dims.num_kv_heads, k_splits),
        out_shape=[
            jax.ShapeDtypeStruct((k_splits, *q.shape), partial_dtype),
            jax.ShapeDtypeStruct((k_splits, *q.shape[:2]), jnp.float32),
        ],
        interpret=interpret,
        compiler_params=compiler_params(num_warps, num_stages),
        name=f"paged_attention_bkv{block_kv}_split{k_splits}{math.suffix}",
    )(q, pool.data, unused if pool.scales is None else pool.scales, block_tables, kv_lens,
      unused if slopes is None else slopes, unused if sinks is None else sinks)
    if k_splits == 1:
        return o[0]
    return combine_splits(o, lse, sinks).astype(q.dtype)


def combine_splits(o, lse, sinks=None):
    """Merge flash-decoding partials: o f32[k, num_seqs, H, D], lse f32[k, num_seqs, H] ->
    f32[num_seqs, H, D]; `sinks` f32[H] join the denominator."""
    m = lse.max(axis=0)
    if sinks is not None:
        m = jnp.maximum(m, sinks[None, :])
    m = jnp.where(jnp.isfinite(m), m, 0)
    weights = jnp.exp(lse - m)  # 0 for splits that saw no key
    total = weights.sum(axis=0)
    if sinks is not None:
        total = total + jnp.exp(sinks[None, :] - m)
    merged = (weights[..., None] * o).sum(axis=0)
    return merged / jnp.where(total > 0, total, 1)[..., None]


def default_k_splits(num_seqs: int, num_kv_heads: int, span: int) -> int:
    """Enough splits to fill the GPU, never splits shorter than `_MIN_TOKENS_PER_SPLIT` tokens;
    `span` = the most keys one query reads (`key_span`)."""
    by_occupancy = pl.cdiv(_TARGET_PROGRAMS, max(1, num_seqs * num_kv_heads))
    by_length = max(1, span // _MIN_TOKENS_PER_SPLIT)
    return max(1, min(by_occupancy, by_length, _MAX_K_SPLITS))


_TUNING = ("block_kv", "k_splits", "num_warps", "num_stages")


@functools.partial(jax.jit, static_argnames=("layer", "spec", "sm_scale", "interpret") + _TUNING)
def paged_attention_from_pool(q, kv_pool, layer, block_tables, kv_lens, *, spec=None,
                              alibi_slopes=None, sinks=None, sm_scale=None, interpret=None,
                              block_kv=None, k_splits=None, num_warps=4, num_stages=2):
    """Decode attention reading layer `layer` of the engine's KV pool (no copy of the layer).

    Args:
      q: [num_seqs, num_q_heads, head_dim], one query token per sequence (f32, bf16, f16).
      kv_pool: a `KVPool` (fp8 / int8 pools are dequantized in the tile loop), or its bare
        data array [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim] in q's dtype.
      layer: static int, the layer to read.
      block_tables: i32[num_seqs, max_blocks_per_seq]; entries must be valid block ids
        wherever a sequence has tokens the query can see (pad with 0; with a sliding window,
        the pages wholly before the window are never read and may hold any id).
      kv_lens: i32[num_seqs], cached tokens each query attends to (its own included);
        0 marks a padding row, whose output is 0.
      spec: static `AttentionSpec` (scale, sliding window, soft-cap, ALiBi, sinks); default
        plain attention at `sm_scale` (default head_dim ** -0.5). Give one of spec, sm_scale.
      alibi_slopes: f32[num_q_heads], exactly when spec.use_alibi.
      sinks: f32[num_q_heads] sink logits, exactly when spec.use_sinks.
      interpret: None = compiled on GPU, Pallas interpret mode elsewhere.
      block_kv: KV tokens per tile, a power of two >= 16 (default `tiles.default_block_kv`).
      k_splits: partitions of the keys a query reads (flash-decoding); default from the batch
        size and the span (`default_k_splits`).
      num_warps, num_stages: Triton launch parameters.

    Returns:
      [num_seqs, num_q_heads, head_dim] in q's dtype.
    """
    pool = KVPool.wrap(kv_pool)
    dims = validate_attention_args(q, validate_pool(pool.data, layer), pool.data.dtype,
                                   block_tables, kv_lens, decode=True, kernel=True)
    spec = resolve_spec(spec, sm_scale, dims.head_dim)
    slopes, sinks = validate_head_arrays(spec, dims.num_q_heads, alibi_slopes, sinks)
    if block_kv is None:
        block_kv = tiles.default_block_kv("decode", dims.head_dim, q_dtype=q.dtype, kv_dtype=pool.data.dtype)
    check_tile("block_kv", block_kv, MIN_DOT_DIM)
    span = key_span(dims.max_blocks_per_seq * dims.block_size, spec, block_kv)
    if k_splits is None:
        k_splits = default_k_splits(dims.num_seqs, dims.num_kv_heads, span)
    if not isinstance(k_splits, int) or k_splits < 1:
        raise ValueError(f"k_splits must be an int >= 1, got {k_splits!r}")
    tiles.check_fits(rows=max(MIN_DOT_DIM, next_pow2(dims.group)), head_dim=dims.head_dim,
                     block_kv=block_kv, q_dtype=q.dtype, kv_dtype=pool.data.dtype,
                     num_warps=num_warps, num_stages=num_stages)
    return _paged_attention_call(
        q, pool, layer, block_tables, kv_lens, slopes, sinks, dims=dims,
        math=TileMath(spec, pool.scale_kind), block_kv=block_kv, k_splits=k_splits,
        num_warps=num_warps, num_stages=num_stages, interpret=resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("spec", "sm_scale", "interpret") + _TUNING)
def paged_attention(q, k_pages, v_pages, block_tables, kv_lens, *, spec=None, alibi_slopes=None,
                    sinks=None, k_scales=None, v_scales=None, sm_scale=None, interpret=None,
                    block_kv=None, k_splits=None, num_warps=4, num_stages=2):
    """Decode attention over per-layer pages k_pages, v_pages [num_kv_heads, num_blocks,
    block_size, head_dim] (fp8 / int8 pages with their scales: f32[Hkv] / bf16[Hkv,
    num_blocks, block_size]); otherwise as `paged_attention_from_pool` (which it wraps, with
    the arrays stacked into a one-layer pool)."""
    return paged_attention_from_pool(
        q, pages_to_pool(k_pages, v_pages, k_scales, v_scales), 0, block_tables, kv_lens,
        spec=spec, alibi_slopes=alibi_slopes, sinks=sinks, sm_scale=sm_scale,
        interpret=interpret, block_kv=block_kv, k_splits=k_splits, num_warps=num_warps,
        num_stages=num_stages)


def _decode_reference(q, layer: LayerKV, block_tables, kv_lens, spec, sm_scale, alibi_slopes, sinks):
    dims = validate_attention_args(q, layer.k_pages.shape, layer.k_pages.dtype, block_tables,
                                   kv_lens, decode=True, kernel=False)
    spec = resolve_spec(spec, sm_scale, dims.head_dim)
    slopes, sinks = validate_head_arrays(spec, dims.num_q_heads, alibi_slopes, sinks)
    query_pos = (kv_lens - 1)[:, None]  # [num_seqs, 1]
    out = paged_reference(q[:, None], layer, block_tables, kv_lens, query_pos, query_pos >= 0,
                          spec, alibi_slopes=slopes, sinks=sinks)
    return out[:, 0].astype(q.dtype)


@functools.partial(jax.jit, static_argnames=("layer", "spec", "sm_scale"))
def paged_attention_reference_from_pool(q, kv_pool, layer, block_tables, kv_lens, *, spec=None,
                                        alibi_slopes=None, sinks=None, sm_scale=None):
    """Plain-jnp decode attention (gather through the tables, dense masked softmax).

    Same arguments and result as `paged_attention_from_pool`; any head_dim / block_size. The
    CPU fast path: inside jit, XLA gathers from the pool without copying the layer. With a
    sliding window only the window's pages are gathered.
    """
    pool = KVPool.wrap(kv_pool)
    validate_pool(pool.data, layer)
    return _decode_reference(q, pool.layer(layer), block_tables, kv_lens, spec, sm_scale,
                             alibi_slopes, sinks)


@functools.partial(jax.jit, static_argnames=("spec", "sm_scale"))
def paged_attention_reference(q, k_pages, v_pages, block_tables, kv_lens, *, spec=None,
                              alibi_slopes=None, sinks=None, k_scales=None, v_scales=None,
                              sm_scale=None):
    """`paged_attention_reference_from_pool` over per-layer pages (as `paged_attention`).
    Inside jit, pass `kv_pool[layer, 0]`, `kv_pool[layer, 1]`: no copy of the layer is made."""
    return _decode_reference(q, pages_to_layer(k_pages, v_pages, k_scales, v_scales),
                             block_tables, kv_lens, spec, sm_scale, alibi_slopes, sinks)
