"""Decode and ragged paged attention: kernels (interpret mode; compiled on a GPU) against the
jnp references and a float64 numpy oracle, on poisoned pools (see kernel_cases.make_batch)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from tests.kernels.kernel_cases import (
    MODES, assert_close, decode_batch, interpret_flag, make_batch, numpy_attention)

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16

# A covering set, not the cartesian product: every head_dim, block size, dtype once, GQA
# ratios 1, 2, 3, 4, 6, 8, 16, and the tuning knobs away from their defaults.
# (id, head_dim, block_size, num_q_heads, num_kv_heads, dtype, decode tuning, ragged tuning)
CASES = [
    ("d64-b16-g1-f32", 64, 16, 2, 2, F32, {}, {}),
    ("d80-b8-g3-bf16", 80, 8, 6, 2, BF16, {"k_splits": 2}, {"block_q": 8}),
    ("d96-b32-g2-f16", 96, 32, 4, 2, F16, {"k_splits": 3, "block_kv": 16}, {}),
    ("d128-b64-g4-bf16", 128, 64, 8, 2, BF16, {"block_kv": 32}, {"block_kv": 64}),
    ("d256-b16-g2-f32", 256, 16, 4, 2, F32, {"k_splits": 4}, {"block_q": 16, "block_kv": 16}),
    ("d128-b16-g6-f16", 128, 16, 6, 1, F16, {"num_warps": 8}, {"block_q": 2}),
    ("d16-b8-g8-f32", 16, 8, 16, 2, F32, {"block_kv": 128}, {"block_kv": 128}),
    ("d32-b32-g16-bf16", 32, 32, 16, 1, BF16, {}, {"block_q": 1}),
]
CASE_PARAMS = [pytest.param(*c[1:], id=c[0]) for c in CASES]


def _long(block_size):
    return max(6 * block_size, 200) + 3  # several KV tiles and splits


def _dims(num_q_heads, num_kv_heads, head_dim, block_size, dtype):
    return dict(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                block_size=block_size, dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head_dim,block_size,num_q_heads,num_kv_heads,dtype,tuning,_", CASE_PARAMS)
def test_decode(mode, head_dim, block_size, num_q_heads, num_kv_heads, dtype, tuning, _):
    rng = np.random.default_rng(head_dim * 1000 + block_size)
    kv_lens = [1, block_size - 1, block_size, block_size + 1, _long(block_size), 0]
    b = decode_batch(rng, kv_lens, **_dims(num_q_heads, num_kv_heads, head_dim, block_size, dtype))
    expected = numpy_attention(b)

    out = pk.paged_attention_from_pool(b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens,
                                       interpret=interpret_flag(mode), **tuning)
    assert out.shape == b.q.shape and out.dtype == b.q.dtype
    assert_close(out, expected, dtype, "kernel vs float64 oracle")
    assert np.all(np.asarray(out[-1]) == 0), "padding row (kv_len 0) must be exactly 0"
    ref = pk.paged_attention_reference(b.q, b.k_pages, b.v_pages, b.block_tables, b.kv_lens)
    assert_close(ref, expected, dtype, "reference vs float64 oracle")
    assert np.all(np.asarray(ref[-1]) == 0)


def _mixed_seqs(block_size):
    """Full prefill, chunked prefill over a cached prefix, decodes (incl. first token, long)."""
    return [
        (2 * block_size + 3, 2 * block_size + 3),  # full prefill
        (13, 3 * block_size + 13),  # chunk of 13 over a 3-block prefix
        (1, block_size + 1),  # decode
        (1, 1),  # decode of a 1-token sequence
        (block_size - 1, block_size),  # chunk ending exactly at a block boundary
        (1, _long(block_size)),  # long decode
        (block_size + 1, block_size + 1),  # prefill one past a block
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head_dim,block_size,num_q_heads,num_kv_heads,dtype,_,tuning", CASE_PARAMS)
def test_ragged_mixed_batch(mode, head_dim, block_size, num_q_heads, num_kv_heads, dtype, _, tuning):
    rng = np.random.default_rng(head_dim * 1000 + block_size + 1)
    b = make_batch(rng, _mixed_seqs(block_size), num_pad_seqs=2, num_pad_tokens=5,
                   **_dims(num_q_heads, num_kv_heads, head_dim, block_size, dtype))
    expected = numpy_attention(b)
    end = int(b.query_start_loc[-1])

    out = pk.ragged_paged_attention_from_pool(
        b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens, b.query_start_loc,
        interpret=interpret_flag(mode), **tuning)
    assert out.shape == b.q.shape and out.dtype == b.q.dtype
    assert_close(out, expected, dtype, "kernel vs float64 oracle")
    assert np.all(np.asarray(out[end:]) == 0), "padding token rows must be exactly 0"
    ref = pk.ragged_paged_attention_reference(b.q, b.k_pages, b.v_pages, b.block_tables,
                                              b.kv_lens, b.query_start_loc)
    assert_close(ref, expected, dtype, "reference vs float64 oracle")
    assert np.all(np.asarray(ref[end:]) == 0)


@pytest.mark.parametrize("mode", MODES)
def test_ragged_decode_only_matches_decode_kernel(mode):
    """A decode batch through the ragged kernel equals the decode kernel, padding included."""
    rng = np.random.default_rng(7)
    b = decode_batch(rng, [5, 16, 17, 40, 0, 0], **_dims(8, 2, 64, 16, F32))
    q = jnp.where(b.kv_lens[:, None, None] > 0, b.q, 0)  # ragged padding: q_len 0, no NaN q
    qsl = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(b.kv_lens > 0, dtype=jnp.int32)])
    flag = interpret_flag(mode)
    ragged = pk.ragged_paged_attention(q, b.k_pages, b.v_pages, b.block_tables, b.kv_lens, qsl,
                                       interpret=flag)
    decode = pk.paged_attention(q, b.k_pages, b.v_pages, b.block_tables, b.kv_lens,
                                interpret=flag)
    np.testing.assert_allclose(np.asarray(ragged), np.asarray(decode), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_all_padding_gives_zeros(mode):
    rng = np.random.default_rng(3)
    b = make_batch(rng, [(1, 3)], num_pad_seqs=3, num_pad_tokens=7, **_dims(4, 2, 64, 8, BF16))
    pad = dict(block_tables=b.block_tables[1:], kv_lens=b.kv_lens[1:])
    q = jnp.ones((3, 4, 64), BF16)
    flag = interpret_flag(mode)
    out = pk.paged_attention_from_pool(q, b.kv_pool, b.layer, interpret=flag, **pad)
    assert np.all(np.asarray(out) == 0)
    qsl = jnp.zeros(4, jnp.int32)
    out = pk.ragged_paged_attention_from_pool(b.q[1:], b.kv_pool, b.layer,
                                              query_start_loc=qsl, interpret=flag, **pad)
    assert np.all(np.asarray(out) == 0)


@pytest.mark.parametrize("mode", MODES)
def test_pages_api_equals_pool_api_and_sm_scale(mode):
    rng = np.random.default_rng(11)
    b = make_batch(rng, [(3, 20), (1, 9)], **_dims(4, 2, 64, 8, F32))
    args = (b.block_tables, b.kv_lens, b.query_start_loc)
    flag = interpret_flag(mode)
    from_pool = pk.ragged_paged_attention_from_pool(b.q, b.kv_pool, b.layer, *args,
                                                    sm_scale=0.3, interpret=flag)
    from_pages = pk.ragged_paged_attention(b.q, b.k_pages, b.v_pages, *args, sm_scale=0.3,
                                           interpret=flag)
    np.testing.assert_array_equal(np.asarray(from_pool), np.asarray(from_pages))
    assert_close(from_pool, numpy_attention(b, sm_scale=0.3), F32, "sm_scale=0.3")


@pytest.mark.parametrize("mode", MODES)
def test_engine_step_write_then_attend(mode):
    """The engine's use inside one jit: write this step's K/V, then attend over the pool."""
    rng = np.random.default_rng(5)
    b = make_batch(rng, [(4, 12), (1, 30)], num_pad_tokens=3, **_dims(4, 2, 64, 16, BF16))
    num_tokens = b.q.shape[0]
    k_new = jnp.asarray(rng.standard_normal((num_tokens, 2, 64)), BF16)
    v_new = jnp.asarray(rng.standard_normal((num_tokens, 2, 64)), BF16)
    # Rewrite each sequence's newest tokens in place (slots from the tables); padding: -1.
    slots = []
    for s, (q_len, kv_len) in enumerate([(4, 12), (1, 30)]):
        for pos in range(kv_len - q_len, kv_len):
            slots.append(int(b.block_tables[s, pos // 16]) * 16 + pos % 16)
    slot_mapping = jnp.asarray(slots + [-1] * 3, jnp.int32)

    @jax.jit
    def step(pool, q, k, v):
        pool = pk.write_kv_to_pool(pool, b.layer, k, v, slot_mapping)
        out = pk.ragged_paged_attention_from_pool(q, pool, b.layer, b.block_tables, b.kv_lens,
                                                  b.query_start_loc,
                                                  interpret=interpret_flag(mode))
        ref = pk.ragged_paged_attention_reference(q, pool[b.layer, 0], pool[b.layer, 1],
                                                  b.block_tables, b.kv_lens, b.query_start_loc)
        return pool, out, ref

    pool, out, ref = step(b.kv_pool, b.q, k_new, v_new)
    expected = numpy_attention(dataclasses.replace(b, kv_pool=pool))
    assert_close(out, expected, BF16, "kernel after write")
    assert_close(ref, expected, BF16, "reference after write")
