"""Lowering the kernels for CUDA on any machine (no GPU needed).

`jax.jit(f).trace(*shapes).lower(lowering_platforms=("cuda",))` runs Pallas' Triton lowering
on a CPU-only machine and rejects what the GPU would (non-power-of-two tiles, ops Triton
cannot lower). The engine calls `lower_for_cuda` for exactly the configurations it will run;
the kernel tests call it for every supported one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.paged_attention import paged_attention_from_pool
from pallas_kernels.ragged_paged_attention import ragged_paged_attention_from_pool

KINDS = ("decode", "ragged")


def lower_for_cuda(kind: str, *, num_seqs: int, num_q_heads: int, num_kv_heads: int,
                   head_dim: int, block_size: int, max_blocks_per_seq: int,
                   num_tokens: int | None = None, num_blocks: int | None = None,
                   num_layers: int = 1, layer: int = 0, dtype="bfloat16", sm_scale=None,
                   **tuning) -> jax.stages.Lowered:
    """Lowers one kernel configuration for CUDA (compiled mode) and returns the `Lowered`.

    kind: "decode" (`paged_attention_from_pool`) or "ragged"
    (`ragged_paged_attention_from_pool`, with `num_tokens` packed query tokens, default
    num_seqs). num_blocks defaults to num_seqs * max_blocks_per_seq. `tuning` goes to the
    kernel (block_kv, k_splits / block_q, num_warps, num_stages). Raises ValueError for an
    unsupported configuration, and whatever Pallas' Triton lowering raises for one it rejects.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    dtype = jnp.dtype(dtype)
    num_blocks = num_seqs * max_blocks_per_seq if num_blocks is None else num_blocks
    num_tokens = num_seqs if kind == "decode" or num_tokens is None else num_tokens
    i32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.int32)
    q = jax.ShapeDtypeStruct((num_tokens, num_q_heads, head_dim), dtype)
    pool = jax.ShapeDtypeStruct(
        (num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim), dtype)
    metadata = [i32((num_seqs, max_blocks_per_seq)), i32((num_seqs,))]  # tables, kv_lens
    if kind == "decode":
        attention = paged_attention_from_pool
    else:
        attention = ragged_paged_attention_from_pool
        metadata.append(i32((num_seqs + 1,)))  # query_start_loc

    def call(q, pool, *metadata):
        return attention(q, pool, layer, *metadata, sm_scale=sm_scale, interpret=False, **tuning)

    return jax.jit(call).trace(q, pool, *metadata).lower(lowering_platforms=("cuda",))
