"""Writing new K/V into the paged pool through a slot mapping (plain jnp scatter).

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


@functools.partial(jax.jit, static_argnames=("layer",))
def write_kv_to_pool(kv_pool, layer, k, v, slot_mapping):
    """Writes one layer's new K/V into the pool; returns the updated pool.

    Args:
      kv_pool: [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim].
      layer: static int.
      k, v: [num_tokens, num_kv_heads, head_dim] (cast to the pool's dtype).
      slot_mapping: i32[num_tokens]; slot = block_id * block_size + offset; negative = skip.
    """
    num_kv_heads, num_blocks, block_size, head_dim = validate_pool(kv_pool, layer)
    _check_new_kv(k, v, slot_mapping, num_kv_heads, head_dim)
    block, offset = _slots_to_block_offset(slot_mapping, num_blocks, block_size)
    kv = jnp.stack([k, v], axis=1).astype(kv_pool.dtype)  # [num_tokens, 2, num_kv_heads, D]
    # Advanced indices split by slices: the indexed view is [num_tokens, 2, num_kv_heads, D].
    return kv_pool.at[layer, :, :, block, offset].set(kv, mode="drop")


@jax.jit
def write_kv(k_pages, v_pages, k, v, slot_mapping):
    """Per-array layout: k_pages, v_pages [num_kv_heads, num_blocks, block_size, head_dim];
    otherwise as `write_kv_to_pool`. Returns (k_pages, v_pages)."""
    validate_pages(k_pages, v_pages)
    num_kv_heads, num_blocks, block_size, head_dim = k_pages.shape
    _check_new_kv(k, v, slot_mapping, num_kv_heads, head_dim)
    block, offset = _slots_to_block_offset(slot_mapping, num_blocks, block_size)

    def write(pages, new):  # the indexed view is [num_kv_heads, num_tokens, D]
        return pages.at[:, block, offset].set(jnp.swapaxes(new, 0, 1).astype(pages.dtype),
                                              mode="drop")

    return write(k_pages, k), write(v_pages, v)
