"""The jnp references' shared math: gather the keys a tile of queries can see through the
block tables, then dense masked softmax attention with every `AttentionSpec` feature.

It mirrors the kernels' arithmetic where rounding matters: stored K/V are converted exactly to
q's dtype (fp8 and int8 values are exact in bf16/f16/f32), products accumulate in float32, the
fp8 / int8 scales multiply the logits (K) and the probabilities (V) in float32.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels.attention_spec import AttentionSpec
from pallas_kernels.kv_pool import NO_SCALES, PER_HEAD, LayerKV, scale_kind


def window_columns(block_tables, first_key, span: int | None, block_size: int):
    """Block-table columns covering keys [first_key, first_key + span) of each row.

    block_tables i32[n, W], first_key i32[n] (0 without a window), span static (None: the
    whole table). Returns (block ids i32[n, P], key positions i32[n, P * block_size]);
    columns past the table are clamped onto its last one (their positions are >= W * block_size,
    past any kv_len, so they are masked).
    """
    width = block_tables.shape[1]
    if span is None:
        cols = jnp.broadcast_to(jnp.arange(width), block_tables.shape)
    else:
        num_pages = min(width, -(-(span + block_size - 1) // block_size))
        cols = (first_key // block_size)[:, None] + jnp.arange(num_pages)  # [n, P]
    ids = jnp.take_along_axis(block_tables, jnp.minimum(cols, width - 1), axis=1)
    key_pos = (cols[:, :, None] * block_size + jnp.arange(block_size)).reshape(cols.shape[0], -1)
    return ids, key_pos


def gather_pages(pages, block_ids):
    """pages [num_kv_heads, num_blocks, block_size, ...], ids i32[n, P] -> [n, P*block_size, KVH, ...].

    Plain gather: inside jit, `pages` may be a slice of the whole pool (`kv_pool[layer, 0]`);
    XLA fuses the slice into the gather, so no copy of the layer is made.
    """
    num_kv_heads, _, block_size = pages.shape[:3]
    n, width = block_ids.shape
    g = pages[:, block_ids]  # [KVH, n, P, block_size, ...]
    return jnp.moveaxis(g.reshape(num_kv_heads, n, width * block_size, *pages.shape[3:]), 0, 2)


def _key_scales(scales, kind: str, block_ids, n: int, num_keys: int):
    """f32[n, KVH, L] multipliers of the gathered keys (None for an unscaled pool)."""
    if kind == NO_SCALES:
        return None
    if kind == PER_HEAD:  # scales: f32[KVH]
        return jnp.broadcast_to(scales.astype(jnp.float32)[None, :, None], (n, scales.shape[0], num_keys))
    return jnp.moveaxis(gather_pages(scales, block_ids), 2, 1).astype(jnp.float32)  # per token


def paged_reference(q, layer: LayerKV, block_tables, kv_lens, query_pos, row_ok, spec: AttentionSpec,
                    *, alibi_slopes=None, sinks=None):
    """Attention of query tiles over their sequences' paged K/V.

    q: [n, r, num_q_heads, D], tile i belonging to the sequence of block_tables[i] (i32[n, W])
    and kv_lens[i]; query_pos i32[n, r] absolute positions, row_ok bool[n, r]. A windowed spec
    gathers only the pages from the window of each tile's first row (query_pos[:, 0], its
    smallest position) on, so the work follows the window, not the context.
    Returns f32[n, r, num_q_heads, D]; rows that see no key are 0.
    """
    block_size = layer.k_pages.shape[2]
    window = spec.sliding_window
    first_key = (jnp.zeros_like(kv_lens) if window is None
                 else jnp.maximum(query_pos[:, 0] - window + 1, 0))
    span = None if window is None else window + q.shape[1] - 1
    block_ids, key_pos = window_columns(block_tables, first_key, span, block_size)
    k = gather_pages(layer.k_pages, block_ids).astype(q.dtype)  # [n, L, KVH, D]
    v = gather_pages(layer.v_pages, block_ids).astype(q.dtype)
    kind = scale_kind(layer.k_pages.dtype)
    n, num_keys = key_pos.shape
    k_scale = _key_scales(layer.k_scales, kind, block_ids, n, num_keys)
    v_scale = _key_scales(layer.v_scales, kind, block_ids, n, num_keys)
    # Keys that hold data: others may be garbage, even NaN, and are zeroed.
    key_valid = (key_pos < kv_lens[:, None]) & (key_pos >= first_key[:, None])  # [n, L]
    return dense_reference(q, k, v, key_pos, key_valid, query_pos, row_ok, spec, k_scale=k_scale,
                           v_scale=v_scale, alibi_slopes=alibi_slopes, sinks=sinks)


def dense_reference(q, k, v, key_pos, key_valid, query_pos, row_ok, spec: AttentionSpec, *,
                    k_scale=None, v_scale=None, alibi_slopes=None, sinks=None):
    """Dense masked causal softmax attention as `spec` says, float32 math.

    q: [n, r, num_q_heads, D]; k, v: [n, L, num_kv_heads, D] (q's dtype); key_pos i32[n, L];
    key_valid bool[n, L]; query_pos i32[n, r]; row_ok bool[n, r]; k_scale, v_scale f32[n, KVH, L]
    or None; alibi_slopes, sinks f32[num_q_heads] or None.
    """
    n, r, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_q_heads // num_kv_heads
    k = jnp.where(key_valid[:, :, None, None], k, 0)
    v = jnp.where(key_valid[:, :, None, None], v, 0)
    if k_scale is not None:  # scales of keys without data may be garbage too
        k_scale = jnp.where(key_valid[:, None, :], k_scale, 0)
        v_scale = jnp.where(key_valid[:, None, :], v_scale, 0)
    qg = q.reshape(n, r, num_kv_heads, group, head_dim)
    logits = jnp.einsum("nrkgd,nlkd->nkgrl", qg, k, preferred_element_type=jnp.float32,
                        precision=lax.Precision.HIGHEST) * spec.sm_scale  # [n, KVH, G, r, L]
    if k_scale is not None:
        logits = logits * k_scale[:, :, None, None, :]
    if spec.logit_softcap is not None:
        logits = spec.logit_softcap * jnp.tanh(logits / spec.logit_softcap)
    rel = key_pos[:, None, :] - query_pos[:, :, None]  # [n, r, L]: key - query position
    if spec.use_alibi:
        slopes = alibi_slopes.reshape(num_kv_heads, group)[None, :, :, None, None]
        logits = logits + slopes * rel[:, None, None].astype(jnp.float32)
    visible = key_valid[:, None, :] & row_ok[:, :, None] & (rel <= 0)
    if spec.sliding_window is not None:
        visible &= rel > -spec.sliding_window
    vis = visible[:, None, None]  # [n, 1, 1, r, L]
    logits = jnp.where(vis, logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    if sinks is not None:
        sink = sinks.reshape(num_kv_heads, group)[None, :, :, None, None]
        m = jnp.maximum(m, sink)
    m = jnp.where(jnp.isfinite(m), m, 0)
    p = jnp.where(vis, jnp.exp(logits - m), 0)
    denom = p.sum(axis=-1, keepdims=True)
    if sinks is not None:
        denom = denom + jnp.exp(sink - m)
    p = p / jnp.where(denom > 0, denom, 1)
    if v_scale is not None:
        p = p * v_scale[:, :, None, None, :]
    out = jnp.einsum("nkgrl,nlkd->nrkgd", p, v.astype(jnp.float32), precision=lax.Precision.HIGHEST)
    return out.reshape(n, r, num_q_heads, head_dim)
