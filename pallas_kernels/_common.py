"""Pieces shared by the attention kernels: validation, padding helpers, online softmax.

Three groups, top to bottom:
  * host-side: supported shapes, argument validation (`ValueError` naming the argument),
    tuning-knob checks, `resolve_interpret`;
  * in-kernel (traced inside Pallas kernel bodies, lowered by Triton): head-dim lanes,
    `attend_kv_tile` (gather one KV tile through the block table + one online-softmax
    step), `finish_rows`;
  * reference (plain jnp): `gather_pages`, `reference_attention`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels._compat import TritonCompilerParams, dot, load

# NOTE: head dims that are not powers of two run padded to the next power of two inside the
# kernels (masked loads); the KV pool itself is never padded.
SUPPORTED_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
SUPPORTED_BLOCK_SIZES = (8, 16, 32, 64)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# Triton's `dot` wants every dimension >= 16.
MIN_DOT_DIM = 16
# Finite "minus infinity" for masked logits: keeps exp() and max() free of inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def resolve_interpret(interpret: bool | None) -> bool:
    """`None` -> compiled on GPU, Pallas interpret mode elsewhere."""
    if interpret is None:
        return jax.default_backend() != "gpu"
    return bool(interpret)


# ----------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class AttentionDims:
    """Static sizes of one attention call, read off validated arguments."""

    num_seqs: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    num_blocks: int
    block_size: int
    max_blocks_per_seq: int

    @property
    def group(self) -> int:  # query heads per kv head (GQA ratio)
        return self.num_q_heads // self.num_kv_heads

    @property
    def head_dim_pad(self) -> int:  # Triton tiles need powers of two
        return next_pow2(self.head_dim)

    def softmax_scale(self, sm_scale: float | None) -> float:
        return self.head_dim ** -0.5 if sm_scale is None else float(sm_scale)


def _check_int32(name: str, x, shape: tuple[int, ...] | None, ndim: int) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.dtype != jnp.int32:
        raise ValueError(f"{name} must be int32, got {x.dtype}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")


def validate_pool(kv_pool, layer) -> tuple[int, int, int, int]:
    """kv_pool [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim], static layer.

    Returns the page shape of one layer: (num_kv_heads, num_blocks, block_size, head_dim).
    """
    if kv_pool.ndim != 6 or kv_pool.shape[1] != 2:
        raise ValueError("kv_pool must be [num_layers, 2, num_kv_heads, num_blocks, block_size,"
                         f" head_dim], got shape {kv_pool.shape}")
    num_layers = kv_pool.shape[0]
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < num_layers:
        raise ValueError(f"layer must be a static int in [0, {num_layers}), got {layer!r}")
    return tuple(kv_pool.shape[2:])


def validate_attention_args(q, pages_shape, pages_dtype, block_tables, kv_lens,
                            query_start_loc=None, *, decode: bool, kernel: bool) -> AttentionDims:
    """Checks an attention call's shapes and dtypes; returns its static sizes.

    q: [num_seqs (decode) or num_tokens (ragged), num_q_heads, head_dim]
    pages_shape: (num_kv_heads, num_blocks, block_size, head_dim) of one layer's K (= V) pages.
    kernel: also check what the Pallas kernels support (head dims, block sizes, dtypes); the
    jnp references take any of them.
    """
    if q.ndim != 3:
        raise ValueError(f"q must be [tokens, num_q_heads, head_dim], got shape {q.shape}")
    num_kv_heads, num_blocks, block_size, head_dim = pages_shape
    num_q_heads = q.shape[1]
    if q.shape[2] != head_dim:
        raise ValueError(f"head_dim mismatch: q has {q.shape[2]}, the KV pages have {head_dim}")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads"
                         f" ({num_kv_heads})")
    if q.dtype != pages_dtype:
        raise ValueError(f"dtype mismatch: q is {q.dtype}, the KV pages are {pages_dtype}")
    if kernel:
        if head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"head_dim {head_dim} is not supported (supported: "
                             f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
        if block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size {block_size} is not supported (supported: "
                             f"{', '.join(map(str, SUPPORTED_BLOCK_SIZES))})")
        if q.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {q.dtype} is not supported (float32, bfloat16, float16)")
    _check_int32("block_tables", block_tables, None, 2)
    num_seqs = block_tables.shape[0]
    if decode and q.shape[0] != num_seqs:
        raise ValueError(f"q has {q.shape[0]} rows but block_tables has {num_seqs} sequences"
                         " (decode: one query token per sequence)")
    _check_int32("kv_lens", kv_lens, (num_seqs,), 1)
    if query_start_loc is not None:
        _check_int32("query_start_loc", query_start_loc, (num_seqs + 1,), 1)
    return AttentionDims(num_seqs, num_q_heads, num_kv_heads, head_dim, num_blocks, block_size,
                         block_tables.shape[1])


def validate_pages(k_pages, v_pages) -> None:
    """k_pages, v_pages: [num_kv_heads, num_blocks, block_size, head_dim], same shape and dtype."""
    if k_pages.ndim != 4:
        raise ValueError("k_pages must be [num_kv_heads, num_blocks, block_size, head_dim], got"
                         f" shape {k_pages.shape}")
    if v_pages.shape != k_pages.shape or v_pages.dtype != k_pages.dtype:
        raise ValueError(f"v_pages {v_pages.shape} {v_pages.dtype} must match k_pages"
                         f" {k_pages.shape} {k_pages.dtype}")


def pages_to_pool(k_pages, v_pages):
    """[num_kv_heads, num_blocks, block_size, head_dim] x2 -> a one-layer pool [1, 2, ...]."""
    validate_pages(k_pages, v_pages)
    return jnp.stack([k_pages, v_pages])[None]


def check_tile(name: str, value: int, minimum: int = 1) -> int:
    """Tuning knobs that size Triton tiles must be powers of two >= minimum."""
    if not isinstance(value, (int, np.integer)) or value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value!r}")
    return int(value)


def compiler_params(num_warps: int, num_stages: int):
    """Triton compiler params; passing them is what selects Pallas' Triton backend on GPU."""
    check_tile("num_warps", num_warps)
    if not isinstance(num_stages, (int, np.integer)) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
    return TritonCompilerParams(num_warps=int(num_warps), num_stages=int(num_stages))


# ----------------------------------------------------------------------------- in-kernel


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


def _dot_precision(dtype):
    # NOTE: Triton's default f32 dot is TF32 (10-bit mantissa); ask for IEEE f32 instead.
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def init_softmax_state(rows: int, head_dim_pad: int):
    """(acc f32[rows, Dp], running max f32[rows], running sum f32[rows])."""
    return (jnp.zeros((rows, head_dim_pad), jnp.float32),
            jnp.full((rows,), MASK_VALUE, jnp.float32),
            jnp.zeros((rows,), jnp.float32))


def attend_kv_tile(state, q, kv_pool_ref, block_tables_ref, *, layer: int, seq, kv_head,
                   kv_start, kv_end, block_kv: int, sm_scale: float, query_pos=None):
    """One online-softmax step of `q` over keys [kv_start, kv_start + block_kv) of `seq`.

    q: [rows, Dp] (q dtype, zero in padded lanes); state from `init_softmax_state`.
    kv_pool_ref: [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    block_tables_ref: i32[num_seqs, max_blocks_per_seq]
    Keys at positions >= kv_end are neither read nor attended; with `query_pos` (i32[rows])
    the step is causal: row r sees keys <= query_pos[r].
    NOTE: only block-table entries of pages below cdiv(kv_end, block_size) address K/V.
    """
    acc, m_prev, l_prev = state
    _, _, _, _, block_size, head_dim = kv_pool_ref.shape
    max_blocks = block_tables_ref.shape[1]
    d_idx, d_ok = head_dim_lanes(head_dim)

    key_pos = kv_start + jnp.arange(block_kv, dtype=jnp.int32)  # i32[block_kv]
    key_ok = key_pos < kv_end  # bool[block_kv]
    page = jnp.minimum(key_pos // block_size, max_blocks - 1)
    block_ids = load(block_tables_ref.at[seq, page])  # i32[block_kv]
    rows_idx = (block_ids[:, None], (key_pos % block_size)[:, None], d_idx[None, :])
    lanes_ok = key_ok[:, None] & d_ok[None, :]  # [block_kv, Dp]
    k = load(kv_pool_ref.at[(layer, 0, kv_head) + rows_idx], mask=lanes_ok, other=0)
    v = load(kv_pool_ref.at[(layer, 1, kv_head) + rows_idx], mask=lanes_ok, other=0)

    precision = _dot_precision(q.dtype)
    logits = dot(q, k, trans_b=True, precision=precision) * sm_scale  # f32[rows, block_kv]
    visible = jnp.broadcast_to(key_ok[None, :], logits.shape)
    if query_pos is not None:
        visible = visible & (key_pos[None, :] <= query_pos[:, None])
    logits = jnp.where(visible, logits, MASK_VALUE)
    m_next = jnp.maximum(m_prev, logits.max(axis=1))  # f32[rows]
    alpha = jnp.exp(m_prev - m_next)
    p = jnp.where(visible, jnp.exp(logits - m_next[:, None]), 0.0)  # f32[rows, block_kv]
    l_next = l_prev * alpha + p.sum(axis=1)
    acc = acc * alpha[:, None] + dot(p.astype(v.dtype), v, precision=precision)
    return acc, m_next, l_next


def finish_rows(state):
    """Normalised output f32[rows, Dp] and log-sum-exp f32[rows] (-inf, zeros where no key)."""
    acc, m, l = state
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    out = acc / l_safe[:, None]
    lse = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)
    return out, lse


# ----------------------------------------------------------------------------- reference


def gather_pages(pages, block_tables):
    """pages [num_kv_heads, num_blocks, block_size, D], tables i32[n, W] -> [n, W*block_size, KVH, D].

    Plain gather: inside jit, `pages` may be a slice of the whole pool (`kv_pool[layer, 0]`);
    XLA fuses the slice into the gather, so no copy of the layer is made.
    """
    num_kv_heads, _, block_size, head_dim = pages.shape
    n, width = block_tables.shape
    g = pages[:, block_tables]  # [KVH, n, W, block_size, D]
    return jnp.moveaxis(g.reshape(num_kv_heads, n, width * block_size, head_dim), 0, 2)


def reference_attention(q, k, v, key_valid, visible, sm_scale: float):
    """Dense masked softmax attention, float32 math.

    q: [n, r, num_q_heads, D]; k, v: [n, L, num_kv_heads, D]; key_valid: bool[n, L] (keys that
    hold data: others may be garbage, even NaN, and are zeroed); visible: bool[n, r, L].
    Returns f32[n, r, num_q_heads, D]; rows that see no key are zero.
    """
    n, r, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    k = jnp.where(key_valid[:, :, None, None], k, 0)
    v = jnp.where(key_valid[:, :, None, None], v, 0)
    qg = q.reshape(n, r, num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    logits = jnp.einsum("nrkgd,nlkd->nkgrl", qg, k, preferred_element_type=jnp.float32,
                        precision=lax.Precision.HIGHEST) * sm_scale
    vis = visible[:, None, None]  # [n, 1, 1, r, L]
    logits = jnp.where(vis, logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.where(vis, jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0)), 0)
    denom = p.sum(axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1)
    out = jnp.einsum("nkgrl,nlkd->nrkgd", p, v.astype(jnp.float32),
                     precision=lax.Precision.HIGHEST)
    return out.reshape(n, r, num_q_heads, head_dim)
