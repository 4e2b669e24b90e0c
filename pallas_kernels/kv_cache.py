"""Writing new K/V into the paged pool through a slot mapping (plain jnp scatter), quantizing
on write for fp8 / int8 pools (pallas_kernels/kv_pool.py describes the formats).

A token at position p of a sequence lives at slot `block_table[p // block_size] * block_size
+ p % block_size`; `slot_mapping[t]` is that slot for packed token t, negative for padding.
In place when the pool is donated to the enclosing jit (`donate_argnums`): XLA scatters into
the donated buffer, the compiled step's temporary memory stays far below the pool's size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels._common import validate_pages, validate_pool
from pallas_kernels.kv_pool import INT8_MAX, INT8_SCALE_DTYPE, PER_HEAD, PER_TOKEN, KVPool


def _slots_to_block_offset(slot_mapping, num_blocks: int, block_size: int):
    """i32[num_tokens] slots -> (block ids, offsets); negative slots map out of bounds.

    NOTE: jnp `.at[]` wraps negative indices like numpy, so padding slots (< 0) are sent to
    block `num_blocks` (out of bounds) and the scatter uses mode="drop".
    """
    if slot_mapping.ndim != 1 or slot_mapping.dtype != jnp.int32:
        raise ValueError(f"slot_mapping must be i32[num_tokens], got {slot_mapping.dtype}"
                         f"{list(slot_mapping.shape)}")
    slots = jnp.where(slot_mapping < 0, num_blocks * block_size, slot_mapping)
    return slots // block_size, slots % block_size


def _check_new_kv(k, v, slot_mapping, num_kv_heads: int, head_dim: int) -> None:
    expected = (slot_mapping.shape[0], num_kv_heads, head_dim)
    if k.shape != expected or v.shape != expected:
        raise ValueError(f"k and v must be [num_tokens, num_kv_heads, head_dim] = {expected},"
                         f" got {k.shape} and {v.shape}")


def quantize_fp8(x, scale, dtype):
    """x f32[..., D] / scale (broadcast against x[..., 0]), saturated to the fp8 range."""
    limit = float(jnp.finfo(dtype).max)
    return jnp.clip(x / scale[..., None], -limit, limit).astype(dtype)


def quantize_int8(x):
    """x f32[..., D] -> (int8[..., D], bf16 scales[...]): per-row absmax / 127, round to nearest.

    The scale is rounded to bfloat16 first and the division uses the rounded value, so
    `q * scale` is the stored value's exact dequantization (error <= scale / 2, or a
    clipped ~2^-9 relative at the row's largest element).
    """
    absmax = jnp.max(jnp.abs(x), axis=-1)
    scale = jnp.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(INT8_SCALE_DTYPE)
    q = jnp.clip(jnp.round(x / scale.astype(jnp.float32)[..., None]), -INT8_MAX, INT8_MAX)
    return q.astype(jnp.int8), scale


@functools.partial(jax.jit, static_argnames=("layer",))
def write_kv_to_pool(kv_pool, layer, k, v, slot_mapping):
    """Writes one layer's new K/V into the pool; returns the updated pool.

    Args:
      kv_pool: a `KVPool`, or its bare data array [num_layers, 2, num_kv_heads, num_blocks,
        block_size, head_dim] (an "auto" pool: returned as a bare array).
      layer: static int.
      k, v: [num_tokens, num_kv_heads, head_dim] (any float dtype: cast, or quantized for fp8
        (static scales of this layer) and int8 pools (per-token scales computed and stored)).
      slot_mapping: i32[num_tokens]; slot = block_id * block_size + offset; negative = skip.
    """
    pool = KVPool.wrap(kv_pool)
    num_kv_heads, num_blocks, block_size, head_dim = validate_pool(pool.data, layer)
    _check_new_kv(k, v, slot_mapping, num_kv_heads, head_dim)
    block, offset = _slots_to_block_offset(slot_mapping, num_blocks, block_size)
    kv = jnp.stack([k, v], axis=1)  # [num_tokens, 2, num_kv_heads, D]
    scales = pool.scales
    if pool.scale_kind == PER_HEAD:
        kv = quantize_fp8(kv.astype(jnp.float32), pool.scales[layer][None], pool.data.dtype)
    elif pool.scale_kind == PER_TOKEN:
        kv, token_scales = quantize_int8(kv.astype(jnp.float32))  # scales: [num_tokens, 2, Hkv]
        scales = scales.at[layer, :, :, block, offset].set(token_scales, mode="drop")
    # Advanced indices split by slices: the indexed view is [num_tokens, 2, num_kv_heads, D].
    data = pool.data.at[layer, :, :, block, offset].set(kv.astype(pool.data.dtype), mode="drop")
    return KVPool(data, scales) if isinstance(kv_pool, KVPool) else data


@jax.jit
def write_kv(k_pages, v_pages, k, v, slot_mapping):
    """Per-array layout of an "auto" pool: k_pages, v_pages [num_kv_heads, num_blocks,
    block_size, head_dim]; otherwise as `write_kv_to_pool`. Returns (k_pages, v_pages)."""
    validate_pages(k_pages, v_pages)
    num_kv_heads, num_blocks, block_size, head_dim = k_pages.shape
    _check_new_kv(k, v, slot_mapping, num_kv_heads, head_dim)
    block, offset = _slots_to_block_offset(slot_mapping, num_blocks, block_size)

    def write(pages, new):  # the indexed view is [num_kv_heads, num_tokens, D]
        return pages.at[:, block, offset].set(jnp.swapaxes(new, 0, 1).astype(pages.dtype),
                                              mode="drop")

    return write(k_pages, k), write(v_pages, v)


@jax.jit
def copy_blocks(kv_pool, src, dst):
    """Copy-on-write: blocks `dst` of every layer and head (and their int8 scales) become
    copies of blocks `src` (i32[n] each); returns the pool, a bare array for a bare array.
    In place when the pool is donated to the enclosing jit."""
    pool = KVPool.wrap(kv_pool).copy_blocks(src, dst)
    return pool if isinstance(kv_pool, KVPool) else pool.data
