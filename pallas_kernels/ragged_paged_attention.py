"""Ragged paged attention: prefill, chunked prefill over a cached prefix, decode, any mix.

The new tokens of all sequences are packed in `q [num_tokens, ...]`; sequence s owns
`q[query_start_loc[s]:query_start_loc[s+1]]`, its LAST q_len tokens out of kv_lens[s] (their
K/V already in the pages). Causal: the query at absolute position p sees keys <= p (and,
with a sliding window W, > p - W).

Kernel design (as vLLM's Triton "unified attention"): one program per (q tile, kv head).
A q tile holds `block_q` consecutive tokens of ONE sequence times the G query heads of the kv
head (the group padded to a power of two), so each K/V tile is loaded once per group. Tile
slots are static: sequence s owns slots from `query_start_loc[s] // block_q + s` on, which
bounds the total by `num_tokens // block_q + num_seqs`; a program binary-searches its sequence
and exits if its slot has no tokens. Rows past `query_start_loc[-1]` are never written: the
output starts as zeros (aliased), so padding rows read 0. A windowed program loops from the
KV tile holding its first query's window start: its cost follows the window.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import tiles
from pallas_kernels._common import (
    AttentionDims, check_tile, compiler_params, next_pow2, pages_to_layer, pages_to_pool,
    resolve_interpret, resolve_spec, validate_attention_args, validate_head_arrays,
    validate_pool)
from pallas_kernels._compat import load, pl, store
from pallas_kernels._reference import paged_reference
from pallas_kernels._tile import (
    PoolRefs, TileMath, attend_kv_tile, finish_rows, head_dim_lanes, init_softmax_state,
    load_head_values, per_head_scales, store_index, window_start)
from pallas_kernels.kv_pool import KVPool, LayerKV


def _tile_sequence(query_start_loc_ref, tile, block_q: int, num_seqs: int):
    """Largest s with query_start_loc[s] // block_q + s <= tile (binary search on scalars)."""

    def step(_, bounds):
        lo, hi = bounds  # NOTE: invariant: the answer lies in [lo, hi)
        mid = (lo + hi) // 2
        ok = query_start_loc_ref[mid] // block_q + mid <= tile
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    init = (jnp.int32(0), jnp.int32(num_seqs))
    lo, _ = lax.fori_loop(0, max(1, num_seqs.bit_length()), step, init)
    return lo


def ragged_paged_attention_kernel(
    q_ref,  # [num_tokens, num_q_heads, head_dim]
    kv_ref,  # [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim] (storage dtype)
    scales_ref,  # f32[L, 2, Hkv] (fp8) | bf16[L, 2, Hkv, num_blocks, block_size] (int8) | unused
    block_tables_ref,  # i32[num_seqs, max_blocks_per_seq]
    kv_lens_ref,  # i32[num_seqs]
    query_start_loc_ref,  # i32[num_seqs + 1]
    slopes_ref,  # f32[num_q_heads] ALiBi slopes (read only with spec.use_alibi)
    sinks_ref,  # f32[num_q_heads] sink logits (read only with spec.use_sinks)
    zeros_ref,  # [num_tokens, num_q_heads, head_dim]: aliased to o_ref, never read
    o_ref,  # [num_tokens, num_q_heads, head_dim]
    *,
    layer: int,
    math: TileMath,
    block_q: int,
    block_kv: int,
):
    del zeros_ref
    tile, kv_head = pl.program_id(0), pl.program_id(1)
    num_tokens, num_q_heads, head_dim = q_ref.shape
    num_seqs = kv_lens_ref.shape[0]
    group = num_q_heads // kv_ref.shape[2]
    group_pad = next_pow2(group)

    seq = _tile_sequence(query_start_loc_ref, tile, block_q, num_seqs)
    q_start = query_start_loc_ref[seq]
    q_len = query_start_loc_ref[seq + 1] - q_start
    first = (tile - (q_start // block_q + seq)) * block_q  # first token of the tile in seq

    @pl.when(first < q_len)
    def _():
        kv_len = kv_lens_ref[seq]
        r = jnp.arange(block_q * group_pad, dtype=jnp.int32)  # rows: token-major, head-minor
        tok = first + r // group_pad  # i32[rows], token index within the sequence
        g = r % group_pad
        row_ok = (tok < q_len) & (g < group)
        query_pos = kv_len - q_len + tok  # absolute positions
        token_idx = jnp.minimum(q_start + tok, num_tokens - 1)
        heads = kv_head * group + jnp.minimum(g, group - 1)
        d_idx, d_ok = head_dim_lanes(head_dim)
        lanes_ok = row_ok[:, None] & d_ok[None, :]  # [rows, Dp]
        q = load(q_ref.at[token_idx[:, None], heads[:, None], d_idx[None, :]],
                 mask=lanes_ok, other=0)

        # Keys of the tile: from its first query's window start to its last query's position.
        key_lo = window_start(kv_len - q_len + first, math.spec)
        kv_end = kv_len - q_len + jnp.minimum(first + block_q, q_len)
        first_tile = key_lo // block_kv
        num_tiles = pl.cdiv(jnp.maximum(kv_end, 0), block_kv)
        pool = PoolRefs(kv_ref, scales_ref, block_tables_ref, layer)
        k_scale, v_scale = per_head_scales(pool, math, kv_head)
        slopes = load_head_values(slopes_ref, heads, row_ok) if math.spec.use_alibi else None

        def body(i, state):
            return attend_kv_tile(state, q, pool, math=math, seq=seq, kv_head=kv_head,
                                  kv_start=i * block_kv, key_lo=key_lo, kv_end=kv_end,
                                  block_kv=block_kv, query_pos=query_pos, causal=True,
                                  k_scale=k_scale, slopes=slopes)

        state = lax.fori_loop(first_tile, num_tiles, body,
                              init_softmax_state(r.shape[0], d_idx.shape[0]))
        sinks = load_head_values(sinks_ref, heads, row_ok) if math.spec.use_sinks else None
        out, _ = finish_rows(state, v_scale=v_scale, sinks=sinks)
        token_out = store_index(token_idx, row_ok, num_tokens)
        d_out = store_index(d_idx, d_ok, head_dim)
        store(o_ref.at[token_out[:, None], heads[:, None], d_out[None, :]],
              out.astype(o_ref.dtype), mask=lanes_ok)


def _ragged_paged_attention_call(q, pool: KVPool, layer, block_tables, kv_lens, query_start_loc,
                                 slopes, sinks, *, dims: AttentionDims, math: TileMath, block_q,
                                 block_kv, num_warps, num_stages, interpret):
    """pallas_call over grid (q tile slots, num_kv_heads); whole-array refs."""
    num_tiles = q.shape[0] // block_q + dims.num_seqs
    kernel = functools.partial(ragged_paged_attention_kernel, layer=layer, math=math,
                               block_q=block_q, block_kv=block_kv)
    unused = jnp.zeros((1,), jnp.float32)
    operands = (q, pool.data, unused if pool.scales is None else pool.scales, block_tables,
                kv_lens, query_start_loc, unused if slopes is None else slopes,
                unused if sinks is None else sinks, jnp.zeros_like(q))
    return pl.pallas_call(
        kernel,
        grid=(num_tiles, dims.num_kv_heads),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        input_output_aliases={len(operands) - 1: 0},
        interpret=interpret,
        compiler_params=compiler_params(num_warps, num_stages),
        name=f"ragged_paged_attention_bq{block_q}_bkv{block_kv}{math.suffix}",
    )(*operands)


_TUNING = ("block_q", "block_kv", "num_warps", "num_stages")


@functools.partial(jax.jit, static_argnames=("layer", "spec", "sm_scale", "interpret") + _TUNING)
def ragged_paged_attention_from_pool(q, kv_pool, layer, block_tables, kv_lens, query_start_loc,
                                     *, spec=None, alibi_slopes=None, sinks=None, sm_scale=None,
                                     interpret=None, block_q=None, block_kv=None, num_warps=4,
                                     num_stages=2):
    """Ragged causal attention reading layer `layer` of the engine's KV pool (no copy).

    Args:
      q: [num_tokens, num_q_heads, head_dim], the new tokens of all sequences, packed.
      kv_pool: a `KVPool` (fp8 / int8 pools are dequantized in the tile loop), or its bare
        data array [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim] in q's dtype.
      layer: static int, the layer to read.
      block_tables: i32[num_seqs, max_blocks_per_seq]; valid block ids wherever a sequence
        has tokens its queries can see (pad with 0; with a sliding window, pages wholly before
        the window of the sequence's first query of this step are never read).
      kv_lens: i32[num_seqs], tokens in the cache per sequence, this step's included.
      query_start_loc: i32[num_seqs + 1], sequence s owns q rows [qsl[s], qsl[s+1]): its last
        q_len tokens. Padding sequences repeat the last entry and have kv_len 0.
      spec: static `AttentionSpec`; default plain attention at `sm_scale` (default
        head_dim ** -0.5). Give one of spec, sm_scale.
      alibi_slopes, sinks: f32[num_q_heads], exactly when spec.use_alibi / spec.use_sinks.
      interpret: None = compiled on GPU, Pallas interpret mode elsewhere.
      block_q: tokens per q tile, a power of two; block_q x next_pow2(G) must be >= 16
        (default: `tiles.default_block_q`, from the mean query length).
      block_kv: KV tokens per tile, a power of two >= 16 (default `tiles.default_block_kv`).
      num_warps, num_stages: Triton launch parameters.
      Tiles that would not fit an H100's shared memory are rejected (`tiles.check_fits`).

    Returns:
      [num_tokens, num_q_heads, head_dim] in q's dtype; rows past query_start_loc[-1] are 0.
    """
    pool = KVPool.wrap(kv_pool)
    dims = validate_attention_args(q, validate_pool(pool.data, layer), pool.data.dtype,
                                   block_tables, kv_lens, query_start_loc, decode=False,
                                   kernel=True)
    spec = resolve_spec(spec, sm_scale, dims.head_dim)
    slopes, sinks = validate_head_arrays(spec, dims.num_q_heads, alibi_slopes, sinks)
    if block_q is None:
        block_q = tiles.default_block_q(dims.group, dims.head_dim, q.shape[0], dims.num_seqs,
                                        q_dtype=q.dtype, kv_dtype=pool.data.dtype)
    if block_kv is None:
        block_kv = tiles.default_block_kv("ragged", dims.head_dim, q_dtype=q.dtype, kv_dtype=pool.data.dtype)
    check_tile("block_q", block_q)
    check_tile("block_kv", block_kv, tiles.MIN_DOT_DIM)
    rows = block_q * next_pow2(dims.group)
    if rows < tiles.MIN_DOT_DIM:
        raise ValueError(f"block_q ({block_q}) x padded group ({next_pow2(dims.group)}) must be"
                         f" >= {tiles.MIN_DOT_DIM} rows for Triton's dot")
    tiles.check_fits(rows=rows, head_dim=dims.head_dim, block_kv=block_kv, q_dtype=q.dtype,
                     kv_dtype=pool.data.dtype, num_warps=num_warps, num_stages=num_stages)
    return _ragged_paged_attention_call(
        q, pool, layer, block_tables, kv_lens, query_start_loc, slopes, sinks, dims=dims,
        math=TileMath(spec, pool.scale_kind), block_q=block_q, block_kv=block_kv,
        num_warps=num_warps, num_stages=num_stages, interpret=resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("spec", "sm_scale", "interpret") + _TUNING)
def ragged_paged_attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, *,
                           spec=None, alibi_slopes=None, sinks=None, k_scales=None,
                           v_scales=None, sm_scale=None, interpret=None, block_q=None,
                           block_kv=None, num_warps=4, num_stages=2):
    """Ragged attention over per-layer pages k_pages, v_pages [num_kv_heads, num_blocks,
    block_size, head_dim] (fp8 / int8 pages with their scales); otherwise as
    `ragged_paged_attention_from_pool` (which it wraps, with the arrays stacked into a
    one-layer pool)."""
    return ragged_paged_attention_from_pool(
        q, pages_to_pool(k_pages, v_pages, k_scales, v_scales), 0, block_tables, kv_lens,
        query_start_loc, spec=spec, alibi_slopes=alibi_slopes, sinks=sinks, sm_scale=sm_scale,
        interpret=interpret, block_q=block_q, block_kv=block_kv, num_warps=num_warps,
        num_stages=num_stages)


def _ragged_reference(q, layer: LayerKV, block_tables, kv_lens, query_start_loc, spec, sm_scale,
                      alibi_slopes, sinks):
    """Tokens are grouped into tiles of `block_q` tokens of one sequence, as in the kernel, and
    each tile attends densely to its sequence's gathered K/V: memory stays O(num_tokens x
    context) (a per-token gather of K/V would be head_dim x num_kv_heads times more), or
    O(num_tokens x window) with a sliding window. block_q ~ num_tokens / num_seqs keeps both
    the empty tile slots and the padded rows under 2x."""
    dims = validate_attention_args(q, layer.k_pages.shape, layer.k_pages.dtype, block_tables,
                                   kv_lens, query_start_loc, decode=False, kernel=False)
    spec = resolve_spec(spec, sm_scale, dims.head_dim)
    slopes, sinks = validate_head_arrays(spec, dims.num_q_heads, alibi_slopes, sinks)
    num_tokens, num_seqs = q.shape[0], dims.num_seqs
    block_q = next_pow2(-(-num_tokens // max(1, num_seqs)))
    num_tiles = num_tokens // block_q + num_seqs

    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # i32[num_seqs]
    first_slot = query_start_loc[:-1] // block_q + jnp.arange(num_seqs)  # i32[num_seqs]
    tile_seq = jnp.searchsorted(first_slot, jnp.arange(num_tiles), side="right") - 1
    tok = ((jnp.arange(num_tiles) - first_slot[tile_seq]) * block_q)[:, None] + jnp.arange(block_q)
    row_ok = tok < q_lens[tile_seq][:, None]  # [num_tiles, block_q]
    token_idx = jnp.where(row_ok, query_start_loc[tile_seq][:, None] + tok, num_tokens)
    query_pos = (kv_lens - q_lens)[tile_seq][:, None] + tok  # [num_tiles, block_q]
    q_tiles = q.at[token_idx].get(mode="fill", fill_value=0)  # [num_tiles, block_q, H, D]
    out = paged_reference(q_tiles, layer, block_tables[tile_seq], kv_lens[tile_seq], query_pos,
                          row_ok, spec, alibi_slopes=slopes, sinks=sinks)
    return jnp.zeros_like(q).at[token_idx].set(out.astype(q.dtype), mode="drop")


@functools.partial(jax.jit, static_argnames=("layer", "spec", "sm_scale"))
def ragged_paged_attention_reference_from_pool(q, kv_pool, layer, block_tables, kv_lens,
                                               query_start_loc, *, spec=None, alibi_slopes=None,
                                               sinks=None, sm_scale=None):
    """Plain-jnp ragged causal attention; same arguments and result as
    `ragged_paged_attention_from_pool`, any head_dim / block_size. The CPU fast path."""
    pool = KVPool.wrap(kv_pool)
    validate_pool(pool.data, layer)
    return _ragged_reference(q, pool.layer(layer), block_tables, kv_lens, query_start_loc, spec,
                             sm_scale, alibi_slopes, sinks)


@functools.partial(jax.jit, static_argnames=("spec", "sm_scale"))
def ragged_paged_attention_reference(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc,
                                     *, spec=None, alibi_slopes=None, sinks=None, k_scales=None,
                                     v_scales=None, sm_scale=None):
    """`ragged_paged_attention_reference_from_pool` over per-layer pages (as
    `ragged_paged_attention`). Inside jit, pass `kv_pool[layer, 0]`, `kv_pool[layer, 1]`."""
    return _ragged_reference(q, pages_to_layer(k_pages, v_pages, k_scales, v_scales),
                             block_tables, kv_lens, query_start_loc, spec, sm_scale,
                             alibi_slopes, sinks)
