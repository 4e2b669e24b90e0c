"""Tile choices against the sm_90 limits: the shared-memory check rejects what the GPU cannot
launch (the compile side of it is in test_deviceless_compile.py), and every default fits."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels as pk
from pallas_kernels import tiles


def test_target_limits_are_read_from_the_shipped_h100_config():
    limits = tiles.target_limits("h100")
    assert limits.compute_capability == (9, 0)
    assert limits.shared_memory_per_block_optin == 232448
    assert limits.threads_per_block_limit == 1024 and limits.registers_per_block_limit == 65536
    with pytest.raises(ValueError, match="target must be one of"):
        tiles.target_limits("tpu-v5")


def test_mains_tuning_case_is_rejected_before_compiling():
    """ragged, block_q=128, block_kv=128, num_stages=3, 16 q heads per KV head: 2048 q rows,
    589,824 bytes of shared memory on sm_90 (limit 232,448)."""
    config = pk.KernelConfig("ragged", 4, 16, 1, 128, 16, 32, num_tokens=256,
                             tuning=dict(block_q=128, block_kv=128, num_stages=3))
    with pytest.raises(ValueError, match=r"need ~590336 bytes of shared memory, over the 232448 of h100"):
        jax.jit(config.function()).trace(*config.abstract_args())
    assert tiles.shared_memory_bytes(rows=2048, head_dim=128, block_kv=128, q_dtype=jnp.bfloat16,
                                     kv_dtype=jnp.bfloat16, num_stages=3) >= 589824


@pytest.mark.parametrize("kind,tuning", [("decode", dict(num_warps=64)), ("ragged", dict(num_warps=64))])
def test_more_than_1024_threads_is_rejected(kind, tuning):
    config = pk.KernelConfig(kind, 4, 8, 2, 64, 16, 8, num_tokens=32, tuning=tuning)
    with pytest.raises(ValueError, match=r"num_warps must be <= 32 \(1024 threads per block\)"):
        jax.jit(config.function()).trace(*config.abstract_args())


def test_large_but_legal_tiles_are_accepted():
    tiles.check_fits(rows=128, head_dim=128, block_kv=64, q_dtype=jnp.bfloat16, kv_dtype=jnp.int8,
                     num_warps=8, num_stages=3)
    with pytest.raises(ValueError, match="lower block_q or block_kv"):
        tiles.check_fits(rows=256, head_dim=256, block_kv=128, q_dtype=jnp.float32, kv_dtype=jnp.float32,
                         num_warps=4, num_stages=2)


@pytest.mark.parametrize("kind", ["decode", "ragged"])
def test_every_default_tile_fits(kind):
    for head_dim, group, dtype, kv in itertools.product(pk.SUPPORTED_HEAD_DIMS, (1, 2, 3, 4, 8, 16, 32, 64),
                                                        pk.SUPPORTED_DTYPES, pk.KV_CACHE_DTYPES):
        kv_dtype = pk.storage_dtype(kv, dtype)
        group_pad = 1 << (group - 1).bit_length()
        for tuning in tiles.default_tile_choices(kind, group, head_dim, q_dtype=dtype, kv_dtype=kv_dtype):
            rows = max(16, group_pad) if kind == "decode" else tuning["block_q"] * group_pad
            assert rows >= 16
            tiles.check_fits(rows=rows, head_dim=head_dim, block_kv=tuning["block_kv"], q_dtype=dtype,
                             kv_dtype=kv_dtype, num_warps=4, num_stages=2)


def test_default_block_q_follows_the_mean_query_length_under_the_row_cap():
    assert tiles.default_block_q(4, 128, num_tokens=16, num_seqs=16) == 4  # decode: 16 rows
    assert tiles.default_block_q(4, 128, num_tokens=2048, num_seqs=2) == 16  # 64 rows cap
    assert tiles.default_block_q(4, 256, num_tokens=2048, num_seqs=2) == 8  # 32 rows at d256
    assert tiles.default_block_q(4, 128, num_tokens=2048, num_seqs=2, q_dtype=jnp.float32) == 4
    assert tiles.default_block_q(32, 128, num_tokens=64, num_seqs=1) == 2  # 2 tokens x 32 heads
    assert tiles.default_block_q(128, 128, num_tokens=64, num_seqs=1) == 1  # 1 token x 128 heads
    assert tiles.max_ragged_rows(64, jnp.bfloat16) == 64 and tiles.max_ragged_rows(256, jnp.float32) == 16
