"""In-kernel pieces shared by both attention kernels (traced inside Pallas kernel bodies and
lowered by Triton): head-dim lanes, masked-store indices, and the online-softmax step over one
KV tile gathered through the block table, with every `AttentionSpec` feature and the
dequantization of fp8 / int8 pools.

`TileMath` is the static part of a call: what the logits are and how the pool is scaled.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import MASK_VALUE, next_pow2
from pallas_kernels._compat import dot, load
from pallas_kernels.attention_spec import AttentionSpec
from pallas_kernels.kv_pool import NO_SCALES, PER_HEAD, PER_TOKEN


@dataclasses.dataclass(frozen=True)
class TileMath:
    """Static description of one kernel call's per-tile math."""

    spec: AttentionSpec
    scale_kind: str = NO_SCALES  # the pool's: NO_SCALES, PER_HEAD (fp8), PER_TOKEN (int8)

    @property
    def suffix(self) -> str:
        """Kernel-name suffix naming the variant (shows up in profiles and compile stats)."""
        s = self.spec
        parts = [name for name, on in (("win", s.sliding_window), ("cap", s.logit_softcap),
                                       ("alibi", s.use_alibi), ("sink", s.use_sinks)) if on]
        if self.scale_kind != NO_SCALES:
            parts.append("fp8" if self.scale_kind == PER_HEAD else "int8")
        return "".join("_" + p for p in parts)


class PoolRefs(NamedTuple):
    """The pool as a kernel sees it."""

    kv: object  # ref [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    scales: object  # ref f32[L, 2, Hkv] (fp8) | bf16[L, 2, Hkv, num_blocks, block_size] (int8) | unused
    block_tables: object  # ref i32[num_seqs, max_blocks_per_seq]
    layer: int  # static


def head_dim_lanes(head_dim: int):
    """Lanes of a padded head dim: (clamped index i32[Dp], valid bool[Dp]), Dp = next_pow2."""
    d = jnp.arange(next_pow2(head_dim), dtype=jnp.int32)
    return jnp.minimum(d, head_dim - 1), d < head_dim


def store_index(index, ok, size: int):
    """Index for a masked store: `index` where ok, else out of bounds (`size`).

    NOTE: loads may clamp masked lanes onto valid indices, stores must not: interpret mode
    discharges a masked store as read-select-scatter, and a masked lane aliasing a real one
    would scatter the old value over the new. Out-of-bounds lanes are dropped there and are
    never touched on GPU (masked).
    """
    return jnp.where(ok, index, size)


def dot_precision(dtype):
    # NOTE: Triton's default f32 dot is TF32 (10-bit mantissa); ask for IEEE f32 instead.
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def load_head_values(ref, heads, ok):
    """f32[rows] from a per-query-head ref f32[num_q_heads] (ALiBi slopes, sinks); 0 where not ok."""
    return load(ref.at[heads], mask=ok, other=0).astype(jnp.float32)


def per_head_scales(pool: PoolRefs, math: TileMath, kv_head):
    """(k scale, v scale) f32 scalars of an fp8 pool's layer and KV head; (1, 1) otherwise."""
    if math.scale_kind != PER_HEAD:
        return 1.0, 1.0
    return (pool.scales[pool.layer, 0, kv_head].astype(jnp.float32),
            pool.scales[pool.layer, 1, kv_head].astype(jnp.float32))


def init_softmax_state(rows: int, head_dim_pad: int):
    """(acc f32[rows, Dp], running max f32[rows], running sum f32[rows])."""
    return (jnp.zeros((rows, head_dim_pad), jnp.float32),
            jnp.full((rows,), MASK_VALUE, jnp.float32),
            jnp.zeros((rows,), jnp.float32))


def attend_kv_tile(state, q, pool: PoolRefs, *, math: TileMath, seq, kv_head, kv_start,
                   key_lo, kv_end, block_kv: int, query_pos, causal: bool, k_scale=1.0,
                   slopes=None):
    """One online-softmax step of `q` over keys [kv_start, kv_start + block_kv) of `seq`.

    q: [rows, Dp] (compute dtype, zero in padded lanes); state from `init_softmax_state`.
    Only keys in [key_lo, kv_end) are read (masked loads: nothing else of the pool is touched,
    so unwritten or freed slots may hold anything, NaN included); of those, row r attends to
    the keys `math.spec` lets a query at `query_pos[r]` see (causal: keys <= query_pos[r],
    else all, as in decode; window: keys > query_pos[r] - W).
    query_pos: i32[rows] or a scalar; k_scale: fp8 scale (folded into the logits);
    slopes: f32[rows] ALiBi slopes when `math.spec.use_alibi`.
    NOTE: only block-table entries of pages covering [key_lo, kv_end) address K/V.
    """
    acc, m_prev, l_prev = state
    spec = math.spec
    _, _, _, _, block_size, head_dim = pool.kv.shape
    max_blocks = pool.block_tables.shape[1]
    d_idx, d_ok = head_dim_lanes(head_dim)

    key_pos = kv_start + jnp.arange(block_kv, dtype=jnp.int32)  # i32[block_kv]
    key_ok = (key_pos >= key_lo) & (key_pos < kv_end)  # bool[block_kv]
    page = jnp.clip(key_pos // block_size, 0, max_blocks - 1)
    block_ids = load(pool.block_tables.at[seq, page])  # i32[block_kv]
    offsets = key_pos % block_size
    rows_idx = (block_ids[:, None], offsets[:, None], d_idx[None, :])
    lanes_ok = key_ok[:, None] & d_ok[None, :]  # [block_kv, Dp]
    head = (pool.layer, 0, kv_head)
    # NOTE: `other` must be a float for fp8 storage (Triton casts it to the pointee type).
    zero = 0 if jnp.issubdtype(pool.kv.dtype, jnp.integer) else 0.0
    k = load(pool.kv.at[head + rows_idx], mask=lanes_ok, other=zero).astype(q.dtype)
    v = load(pool.kv.at[(pool.layer, 1, kv_head) + rows_idx], mask=lanes_ok, other=zero).astype(q.dtype)

    precision = dot_precision(q.dtype)
    logits = dot(q, k, trans_b=True, precision=precision) * (spec.sm_scale * k_scale)  # f32[rows, block_kv]
    if math.scale_kind == PER_TOKEN:  # int8: per-key scales, loaded beside the blocks
        token_idx = (block_ids, offsets)
        k_tok = load(pool.scales.at[head + token_idx], mask=key_ok, other=0).astype(jnp.float32)
        v_tok = load(pool.scales.at[(pool.layer, 1, kv_head) + token_idx], mask=key_ok,
                     other=0).astype(jnp.float32)
        logits = logits * k_tok[None, :]
    if spec.logit_softcap is not None:
        logits = spec.logit_softcap * jnp.tanh(logits / spec.logit_softcap)
    rel = key_pos[None, :] - query_pos[..., None] if jnp.ndim(query_pos) else key_pos[None, :] - query_pos
    if spec.use_alibi:
        logits = logits + slopes[:, None] * rel.astype(jnp.float32)
    visible = jnp.broadcast_to(key_ok[None, :], logits.shape)
    if causal:
        visible = visible & (rel <= 0)
    if spec.sliding_window is not None:
        visible = visible & (rel > -spec.sliding_window)
    logits = jnp.where(visible, logits, MASK_VALUE)
    m_next = jnp.maximum(m_prev, logits.max(axis=1))  # f32[rows]
    alpha = jnp.exp(m_prev - m_next)
    p = jnp.where(visible, jnp.exp(logits - m_next[:, None]), 0.0)  # f32[rows, block_kv]
    l_next = l_prev * alpha + p.sum(axis=1)
    if math.scale_kind == PER_TOKEN:
        p = p * v_tok[None, :]  # V's per-token scales, folded into the probabilities
    acc = acc * alpha[:, None] + dot(p.astype(q.dtype), v, precision=precision)
    return acc, m_next, l_next


def window_start(query_pos, spec: AttentionSpec):
    """First key a query at `query_pos` sees (0 without a window)."""
    if spec.sliding_window is None:
        return jnp.int32(0)
    return jnp.maximum(query_pos - spec.sliding_window + 1, 0)


def finish_rows(state, *, v_scale=1.0, sinks=None):
    """Normalised output f32[rows, Dp] and log-sum-exp f32[rows] (-inf, zeros where no key).

    v_scale: fp8 V scale (the output is linear in V). sinks: f32[rows] learned logits that
    join the softmax denominator (the output shrinks by sum / (sum + exp(sink))); the
    log-sum-exp returned is of the keys alone.
    """
    acc, m, l = state
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    denom = l_safe if sinks is None else l_safe + jnp.exp(sinks - m)
    out = acc * (v_scale / denom)[:, None]
    lse = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)
    return out, lse
