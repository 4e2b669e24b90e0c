"""CUDA lowering on a CPU-only machine: Pallas' Triton lowering accepts every supported
configuration and rejects nothing the engine will run.

Covering set (timed: ~80 ms a lowering, the full 840-config product took 67 s on one core):
every head_dim x GQA ratio x dtype, for decode and ragged, with the block sizes cycling
through all four (block_size changes no tile shape, only index arithmetic), plus tuning knobs
away from their defaults and engine-sized shapes.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels as pk

# (num_q_heads, num_kv_heads): GQA ratios 1, 2, 3, 4, 6.
HEADS = [(8, 8), (8, 4), (6, 2), (8, 2), (12, 2)]
DTYPES = ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize("head_dim", pk.SUPPORTED_HEAD_DIMS)
@pytest.mark.parametrize("kind", ["decode", "ragged"])
def test_every_supported_config_lowers(kind, head_dim):
    block_sizes = itertools.cycle(pk.SUPPORTED_BLOCK_SIZES)
    for (num_q_heads, num_kv_heads), dtype in itertools.product(HEADS, DTYPES):
        lowered = pk.lower_for_cuda(
            kind, num_seqs=8, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
            head_dim=head_dim, block_size=next(block_sizes), max_blocks_per_seq=16,
            num_tokens=64, dtype=dtype)
        assert "__gpu$xla.gpu.triton" in lowered.as_text()


@pytest.mark.parametrize("kind,tuning", [
    ("decode", dict(block_kv=16, k_splits=4, num_warps=8, num_stages=3)),
    ("decode", dict(block_kv=128, k_splits=1, num_warps=2, num_stages=1)),
    ("ragged", dict(block_q=1, block_kv=16, num_warps=8)),  # 1 token x 16 heads
    ("ragged", dict(block_q=4, block_kv=128, num_stages=3)),  # 64 rows (128 x 16 is rejected:
])                                                          # test_tiles.py)
def test_tuning_knobs_lower(kind, tuning):
    pk.lower_for_cuda(kind, num_seqs=4, num_q_heads=16, num_kv_heads=1, head_dim=128,
                      block_size=16, max_blocks_per_seq=32, num_tokens=256, **tuning)


@pytest.mark.parametrize("kind", ["decode", "ragged"])
def test_engine_sized_shapes_lower(kind):
    """256 sequences x 4096 context (default k_splits), 2048 tokens, a pool over 4 GiB
    (Pallas switches to 64-bit offsets): shapes only, nothing is allocated."""
    pk.lower_for_cuda(kind, num_seqs=256, num_q_heads=32, num_kv_heads=8, head_dim=128,
                      block_size=16, max_blocks_per_seq=256, num_tokens=2048,
                      num_blocks=65536, num_layers=32, layer=31, dtype="bfloat16")


def test_unsupported_head_dim_is_a_clear_error():
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported \(supported: 16, 32, 64"):
        pk.lower_for_cuda("decode", num_seqs=2, num_q_heads=4, num_kv_heads=2, head_dim=48,
                          block_size=16, max_blocks_per_seq=4)
    with pytest.raises(ValueError, match="kind must be one of"):
        pk.lower_for_cuda("prefill", num_seqs=2, num_q_heads=4, num_kv_heads=2, head_dim=64,
                          block_size=16, max_blocks_per_seq=4)


@pytest.mark.parametrize("attention", [pk.paged_attention_from_pool,
                                       pk.ragged_paged_attention_from_pool])
def test_kernel_reads_the_whole_pool_without_a_layer_copy(attention):
    """In a step that writes then attends, the Triton call takes the whole pool buffer
    (the layer is an index inside the kernel), not a slice XLA would have to materialise."""
    num_seqs, num_q_heads, num_kv_heads, head_dim = 4, 8, 2, 64
    pool_type = jax.ShapeDtypeStruct((3, 2, num_kv_heads, 64, 16, head_dim), jnp.bfloat16)
    q = jax.ShapeDtypeStruct((num_seqs, num_q_heads, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((num_seqs, num_kv_heads, head_dim), jnp.bfloat16)
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    metadata = [i32(num_seqs, 8), i32(num_seqs)]
    if attention is pk.ragged_paged_attention_from_pool:
        metadata.append(i32(num_seqs + 1))

    def step(pool, q, k, v, slots, *metadata):
        pool = pk.write_kv_to_pool(pool, 2, k, v, slots)
        return pool, attention(q, pool, 2, *metadata, interpret=False)

    text = jax.jit(step, donate_argnums=0).trace(
        pool_type, q, kv, kv, i32(num_seqs), *metadata).lower(
        lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line]
    assert len(calls) == 1
    operand_types = re.search(r":\s*\((.*)\)\s*->", calls[0]).group(1)
    assert "tensor<3x2x2x64x16x64xbf16>" in operand_types, operand_types
    assert "tensor<2x64x16x64xbf16>" not in text and "tensor<64x16x64xbf16>" not in text
