"""Ragged paged attention: prefill, chunked prefill over a cached prefix, decode, any mix.

The new tokens of all sequences are packed in `q [num_tokens, ...]`; sequence s owns
`q[query_start_loc[s]:query_start_loc[s+1]]`, its LAST q_len tokens out of kv_lens[s] (their
K/V already in the pages). Causal: the query at absolute position p sees keys <= p.

Kernel design (as vLLM's Triton "unified attention"): one program per (q tile, kv head).
A q tile holds `block_q` consecutive tokens of ONE sequence times the G query heads of the kv
head (the group padded to a power of two), so each K/V tile is loaded once per group. Tile
slots are static: sequence s owns slots from `query_start_loc[s] // block_q + s` on, which
bounds the total by `num_tokens // block_q + num_seqs`; a program binary-searches its sequence
and exits if its slot has no tokens. Rows past `query_start_loc[-1]` are never written: the
output starts as zeros (aliased), so padding rows read 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import (
    MIN_DOT_DIM, AttentionDims, attend_kv_tile, check_tile, compiler_params, finish_rows,
    gather_pages, head_dim_lanes, init_softmax_state, next_pow2, pages_to_pool,
    reference_attention, resolve_interpret, store_index, validate_attention_args,
    validate_pages, validate_pool)
from pallas_kernels._compat import load, pl, store

# Most q rows per program (block_q x padded group) that `default_block_q` picks.
_MAX_ROWS = 64
_MAX_ROWS_HEAD_DIM_256 = 32


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
    kv_pool_ref,  # [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    block_tables_ref,  # i32[num_seqs, max_blocks_per_seq]
    kv_lens_ref,  # i32[num_seqs]
    query_start_loc_ref,  # i32[num_seqs + 1]
    zeros_ref,  # [num_tokens, num_q_heads, head_dim]: aliased to o_ref, never read
    o_ref,  # [num_tokens, num_q_heads, head_dim]
    *,
    layer: int,
    sm_scale: float,
    block_q: int,
    block_kv: int,
):
    del zeros_ref
    tile, kv_head = pl.program_id(0), pl.program_id(1)
    num_tokens, num_q_heads, head_dim = q_ref.shape
    num_seqs = kv_lens_ref.shape[0]
    group = num_q_heads // kv_pool_ref.shape[2]
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

        # Causal limit of the tile: keys up to its last query's position.
        kv_end = kv_len - q_len + jnp.minimum(first + block_q, q_len)
        num_tiles = pl.cdiv(jnp.maximum(kv_end, 0), block_kv)

        def body(i, state):
            return attend_kv_tile(state, q, kv_pool_ref, block_tables_ref, layer=layer,
                                  seq=seq, kv_head=kv_head, kv_start=i * block_kv,
                                  kv_end=kv_end, block_kv=block_kv, sm_scale=sm_scale,
                                  query_pos=query_pos)

        state = lax.fori_loop(0, num_tiles, body, init_softmax_state(r.shape[0], d_idx.shape[0]))
        out, _ = finish_rows(state)
        token_out = store_index(token_idx, row_ok, num_tokens)
        d_out = store_index(d_idx, d_ok, head_dim)
        store(o_ref.at[token_out[:, None], heads[:, None], d_out[None, :]],
              out.astype(o_ref.dtype), mask=lanes_ok)


def _ragged_paged_attention_call(q, kv_pool, layer, block_tables, kv_lens, query_start_loc,
                                 *, dims: AttentionDims, sm_scale, block_q, block_kv,
                                 num_warps, num_stages, interpret):
    """pallas_call over grid (q tile slots, num_kv_heads); whole-array refs."""
    num_tiles = q.shape[0] // block_q + dims.num_seqs
    kernel = functools.partial(ragged_paged_attention_kernel, layer=layer, sm_scale=sm_scale,
                               block_q=block_q, block_kv=block_kv)
    return pl.pallas_call(
        kernel,
        grid=(num_tiles, dims.num_kv_heads),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        input_output_aliases={5: 0},
        interpret=interpret,
        compiler_params=compiler_params(num_warps, num_stages),
        name=f"ragged_paged_attention_bq{block_q}_bkv{block_kv}",
    )(q, kv_pool, block_tables, kv_lens, query_start_loc, jnp.zeros_like(q))


def default_block_q(group: int, head_dim: int, num_tokens: int, num_seqs: int) -> int:
    """Tokens per q tile: about the mean query length (num_tokens / num_seqs, both static), so
    decode-heavy batches do not pad rows and prefill-heavy ones share K/V loads; capped at 64
    rows (32 for head_dim 256) and raised to the 16 rows Triton's dot needs."""
    group_pad = next_pow2(group)
    max_rows = _MAX_ROWS if next_pow2(head_dim) <= 128 else _MAX_ROWS_HEAD_DIM_256
    mean_q_len = next_pow2(-(-num_tokens // max(1, num_seqs)))
    block_q = min(mean_q_len, max(1, max_rows // group_pad))
    return max(block_q, next_pow2(-(-MIN_DOT_DIM // group_pad)))


_TUNING = ("block_q", "block_kv", "num_warps", "num_stages")


@functools.partial(jax.jit, static_argnames=("layer", "sm_scale", "interpret") + _TUNING)
def ragged_paged_attention_from_pool(q, kv_pool, layer, block_tables, kv_lens, query_start_loc,
                                     *, sm_scale=None, interpret=None, block_q=None,
                                     block_kv=32, num_warps=4, num_stages=2):
    """Ragged causal attention reading layer `layer` of the engine's KV pool (no copy).

    Args:
      q: [num_tokens, num_q_heads, head_dim], the new tokens of all sequences, packed.
      kv_pool: [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]; [:, 0] = K.
      layer: static int, the layer to read.
      block_tables: i32[num_seqs, max_blocks_per_seq]; valid block ids wherever a sequence
        has tokens (pad with 0).
      kv_lens: i32[num_seqs], tokens in the cache per sequence, this step's included.
      query_start_loc: i32[num_seqs + 1], sequence s owns q rows [qsl[s], qsl[s+1]): its last
        q_len tokens. Padding sequences repeat the last entry and have kv_len 0.
      sm_scale: softmax scale, default head_dim ** -0.5.
      interpret: None = compiled on GPU, Pallas interpret mode elsewhere.
      block_q: tokens per q tile, a power of two; block_q x next_pow2(G) must be >= 16
        (default: `default_block_q`, from the mean query length).
      block_kv: KV tokens per tile, a power of two >= 16.
      num_warps, num_stages: Triton launch parameters.

    Returns:
      [num_tokens, num_q_heads, head_dim] in q's dtype; rows past query_start_loc[-1] are 0.
    """
    dims = validate_attention_args(q, validate_pool(kv_pool, layer), kv_pool.dtype,
                                   block_tables, kv_lens, query_start_loc, decode=False,
                                   kernel=True)
    if block_q is None:
        block_q = default_block_q(dims.group, dims.head_dim, q.shape[0], dims.num_seqs)
    check_tile("block_q", block_q)
    if block_q * next_pow2(dims.group) < MIN_DOT_DIM:
        raise ValueError(f"block_q ({block_q}) x padded group ({next_pow2(dims.group)}) must be"
                         f" >= {MIN_DOT_DIM} rows for Triton's dot")
    check_tile("block_kv", block_kv, MIN_DOT_DIM)
    return _ragged_paged_attention_call(
        q, kv_pool, layer, block_tables, kv_lens, query_start_loc, dims=dims,
        sm_scale=dims.softmax_scale(sm_scale),
        block_q=block_q, block_kv=block_kv, num_warps=num_warps, num_stages=num_stages,
        interpret=resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("sm_scale", "interpret") + _TUNING)
def ragged_paged_attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, *,
                           sm_scale=None, interpret=None, block_q=None, block_kv=32,
                           num_warps=4, num_stages=2):
    """Ragged attention over per-layer pages k_pages, v_pages [num_kv_heads, num_blocks,
    block_size, head_dim]; otherwise as `ragged_paged_attention_from_pool` (which it wraps,
    with the two arrays stacked into a one-layer pool)."""
    return ragged_paged_attention_from_pool(
        q, pages_to_pool(k_pages, v_pages), 0, block_tables, kv_lens, query_start_loc,
        sm_scale=sm_scale, interpret=interpret, block_q=block_q, block_kv=block_kv,
        num_warps=num_warps, num_stages=num_stages)


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def ragged_paged_attention_reference(q, k_pages, v_pages, block_tables, kv_lens,
                                     query_start_loc, *, sm_scale=None):
    """Plain-jnp ragged causal attention; same arguments and result as `ragged_paged_attention`.

    Tokens are grouped into tiles of `block_q` tokens of one sequence, as in the kernel, and
    each tile attends densely to its sequence's gathered K/V: memory stays O(num_tokens x
    context) (a per-token gather of K/V would be head_dim x num_kv_heads times more).
    block_q ~ num_tokens / num_seqs keeps both the empty tile slots and the padded rows
    under 2x. The CPU fast path: pass `kv_pool[layer, 0]`, `kv_pool[layer, 1]` inside jit.
    """
    validate_pages(k_pages, v_pages)
    dims = validate_attention_args(q, k_pages.shape, k_pages.dtype, block_tables, kv_lens,
                                   query_start_loc, decode=False, kernel=False)
    scale = dims.softmax_scale(sm_scale)
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

    k = gather_pages(k_pages, block_tables[tile_seq])  # [num_tiles, context, KVH, D]
    v = gather_pages(v_pages, block_tables[tile_seq])
    key_pos = jnp.arange(k.shape[1])
    key_valid = key_pos[None, :] < kv_lens[tile_seq][:, None]  # [num_tiles, context]
    visible = (key_pos[None, None, :] <= query_pos[:, :, None]) & row_ok[:, :, None]
    q_tiles = q.at[token_idx].get(mode="fill", fill_value=0)  # [num_tiles, block_q, H, D]
    out = reference_attention(q_tiles, k, v, key_valid, visible & key_valid[:, None], scale)
    return jnp.zeros_like(q).at[token_idx].set(out.astype(q.dtype), mode="drop")
