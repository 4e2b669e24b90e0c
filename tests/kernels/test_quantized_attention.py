"""Both kernels and references over fp8 / int8 pools: exact against the float64 oracle over the
pool's dequantized contents, and within stated bounds of attention over the unquantized values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from tests.kernels.kernel_cases import (
    MODES, alibi_slopes, assert_close, decode_batch, interpret_flag, make_batch, numpy_attention)

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16

# Attention over a quantized pool vs over the values it was made from (K, V ~ N(0, 1), fp8
# scales uniform in [0.5, 2]): |out - exact| <= atol + rtol * |exact| elementwise, and the mean
# |out - exact| under `mean`. Measured on these tests' batches (means over few rows are noisy):
# fp8_e4m3 max 0.06 / mean <= 0.011 (3 mantissa bits: 2^-4 relative per element), fp8_e5m2
# max 0.11 / mean <= 0.024 (2 bits), int8 max 0.010 / mean <= 0.0031 (absmax / 254 per
# element); a bf16 pool: max 0.004 / mean 0.0002. Bounds: ~2x the worst.
QUANTIZATION_ERROR = {
    "fp8": dict(atol=0.15, rtol=0.15, mean=0.02),
    "fp8_e5m2": dict(atol=0.3, rtol=0.3, mean=0.045),
    "int8": dict(atol=0.03, rtol=0.03, mean=0.006),
}
# (kv_cache_dtype, q dtype, head_dim, block_size, num_q_heads, num_kv_heads)
POOLS = [
    pytest.param("fp8", BF16, 128, 16, 8, 2, id="fp8-bf16"),
    pytest.param("fp8_e5m2", F16, 64, 8, 4, 1, id="fp8_e5m2-f16"),
    pytest.param("int8", BF16, 64, 16, 6, 2, id="int8-bf16"),
    pytest.param("int8", F32, 32, 8, 4, 2, id="int8-f32"),
]


def _check_quantization_error(out, b, kv_cache_dtype, rows):
    exact = numpy_attention(b, exact=True)[rows]
    actual = np.asarray(jnp.asarray(out).astype(jnp.float32), np.float64)[rows]
    bound = QUANTIZATION_ERROR[kv_cache_dtype]
    np.testing.assert_allclose(actual, exact, atol=bound["atol"], rtol=bound["rtol"])
    assert np.abs(actual - exact).mean() < bound["mean"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kv_cache_dtype,dtype,head_dim,block_size,num_q_heads,num_kv_heads", POOLS)
def test_decode_over_quantized_pool(mode, kv_cache_dtype, dtype, head_dim, block_size, num_q_heads,
                                    num_kv_heads):
    rng = np.random.default_rng(head_dim + block_size)
    b = decode_batch(rng, [1, block_size + 1, 4 * block_size + 5, 0], num_q_heads=num_q_heads,
                     num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size,
                     dtype=dtype, kv_cache_dtype=kv_cache_dtype)
    out = pk.paged_attention_from_pool(b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens,
                                       interpret=interpret_flag(mode), k_splits=2)
    assert out.dtype == b.q.dtype
    assert_close(out, numpy_attention(b), dtype, "kernel vs oracle over the dequantized pool")
    assert np.all(np.asarray(out[-1]) == 0)
    layer = b.layer_kv
    ref = pk.paged_attention_reference(b.q, layer.k_pages, layer.v_pages, b.block_tables, b.kv_lens,
                                       k_scales=layer.k_scales, v_scales=layer.v_scales)
    assert_close(ref, numpy_attention(b), dtype, "reference vs oracle over the dequantized pool")
    _check_quantization_error(out, b, kv_cache_dtype, slice(0, 3))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kv_cache_dtype,dtype,head_dim,block_size,num_q_heads,num_kv_heads", POOLS)
def test_ragged_over_quantized_pool(mode, kv_cache_dtype, dtype, head_dim, block_size, num_q_heads,
                                    num_kv_heads):
    rng = np.random.default_rng(head_dim + block_size + 1)
    seqs = [(block_size + 3, block_size + 3), (7, 2 * block_size + 7), (1, 3 * block_size)]
    b = make_batch(rng, seqs, num_pad_tokens=2, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                   head_dim=head_dim, block_size=block_size, dtype=dtype, kv_cache_dtype=kv_cache_dtype)
    end = int(b.query_start_loc[-1])
    out = pk.ragged_paged_attention_from_pool(b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens,
                                              b.query_start_loc, interpret=interpret_flag(mode))
    assert_close(out, numpy_attention(b), dtype, "kernel vs oracle over the dequantized pool")
    assert np.all(np.asarray(out[end:]) == 0)
    ref = pk.ragged_paged_attention_reference_from_pool(b.q, b.kv_pool, b.layer, b.block_tables,
                                                        b.kv_lens, b.query_start_loc)
    assert_close(ref, numpy_attention(b), dtype, "reference vs oracle over the dequantized pool")
    _check_quantization_error(out, b, kv_cache_dtype, slice(0, end))


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "int8"])
def test_every_variant_over_a_quantized_pool_with_freed_blocks(kv_cache_dtype):
    """Window + soft-cap + ALiBi + sinks on an int8 / fp8 pool whose out-of-window blocks are
    poisoned (NaN data or NaN scales) and unmapped: a mixed batch with a cached prefix."""
    rng = np.random.default_rng(4)
    spec = pk.AttentionSpec(0.125, sliding_window=20, logit_softcap=8.0, use_alibi=True, use_sinks=True)
    b = make_batch(rng, [(9, 57), (1, 40), (30, 30)], num_pad_seqs=1, num_q_heads=4, num_kv_heads=2,
                   head_dim=64, block_size=8, dtype=BF16, kv_cache_dtype=kv_cache_dtype,
                   free_outside_window=20)
    heads = dict(spec=spec, alibi_slopes=jnp.asarray(alibi_slopes(4)),
                 sinks=jnp.asarray([0.5, -1.0, 2.0, 0.0], jnp.float32))
    expected = numpy_attention(b, **heads)
    args = (b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens, b.query_start_loc)
    out = pk.ragged_paged_attention_from_pool(*args, interpret=True, block_q=8, block_kv=16, **heads)
    assert_close(out, expected, BF16, "ragged kernel")
    ref = pk.ragged_paged_attention_reference_from_pool(*args, **heads)
    assert_close(ref, expected, BF16, "ragged reference")


@pytest.mark.parametrize("kv_cache_dtype", ["int8"])
def test_engine_step_quantizes_on_write_then_attends(kv_cache_dtype):
    """Inside one jit: write this step's K/V (quantized) through the slot mapping, then attend;
    the kernel and the reference agree with the oracle over what was stored."""
    rng = np.random.default_rng(5)
    seqs = [(4, 12), (1, 30)]
    b = make_batch(rng, seqs, num_pad_tokens=3, num_q_heads=4, num_kv_heads=2, head_dim=64,
                   block_size=16, dtype=BF16, kv_cache_dtype=kv_cache_dtype)
    num_tokens = b.q.shape[0]
    k_new = jnp.asarray(rng.standard_normal((num_tokens, 2, 64)), BF16)
    v_new = jnp.asarray(rng.standard_normal((num_tokens, 2, 64)), BF16)
    slots = [int(b.block_tables[s, p // 16]) * 16 + p % 16
             for s, (q_len, kv_len) in enumerate(seqs) for p in range(kv_len - q_len, kv_len)]
    slot_mapping = jnp.asarray(slots + [-1] * 3, jnp.int32)

    @jax.jit
    def step(pool, q, k, v):
        pool = pk.write_kv_to_pool(pool, b.layer, k, v, slot_mapping)
        metadata = (b.block_tables, b.kv_lens, b.query_start_loc)
        return (pool, pk.ragged_paged_attention_from_pool(q, pool, b.layer, *metadata, interpret=True),
                pk.ragged_paged_attention_reference_from_pool(q, pool, b.layer, *metadata))

    pool, out, ref = step(b.kv_pool, b.q, k_new, v_new)
    stored = type(b)(b.q, pool, b.layer, b.block_tables, b.kv_lens, b.query_start_loc)
    expected = numpy_attention(stored)
    assert_close(out, expected, BF16, "kernel after write")
    assert_close(ref, expected, BF16, "reference after write")


def test_quantized_pages_need_their_scales():
    q = jnp.zeros((2, 4, 32), BF16)
    tables, lens = jnp.zeros((2, 2), jnp.int32), jnp.ones((2,), jnp.int32)
    int8 = jnp.zeros((2, 4, 8, 32), jnp.int8)
    with pytest.raises(ValueError, match="int8 pages need k_scales and v_scales"):
        pk.paged_attention_reference(q, int8, int8, tables, lens)
    with pytest.raises(ValueError, match=r"k_scales must be bfloat16\[2, 4, 8\]"):
        pk.paged_attention_reference(q, int8, int8, tables, lens, k_scales=jnp.ones((2,)),
                                     v_scales=jnp.ones((2,)))
    with pytest.raises(ValueError, match="give both k_scales and v_scales"):
        pk.paged_attention(q, int8, int8, tables, lens, k_scales=jnp.ones((2, 4, 8), BF16))
    with pytest.raises(ValueError, match="take no k_scales"):
        pages = jnp.zeros((2, 4, 8, 32), BF16)
        pk.paged_attention(q, pages, pages, tables, lens, k_scales=jnp.ones((2,)), v_scales=jnp.ones((2,)))
    with pytest.raises(ValueError, match="dtype mismatch: q is bfloat16, the KV pages are float16"):
        pages = jnp.zeros((2, 4, 8, 32), F16)
        pk.paged_attention(q, pages, pages, tables, lens)
