"""Attention variants (sliding window, soft-cap, ALiBi, sinks) in both kernels and both
references, against the float64 oracle, on poisoned pools (kernel_cases.make_batch): windowed
cases also poison the blocks a sliding-window block manager would have freed. (An explicit
scale: test_attention.py's sm_scale test, and every spec here carries one.)

NOTE: interpret-mode cost is the kernel's compile (~3 s a configuration), not its run: each
case is one kernel configuration per kind, features combined where they do not interact."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from tests.kernels.kernel_cases import (
    MODES, alibi_slopes, assert_close, decode_batch, interpret_flag, make_batch, numpy_attention)

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
Spec = pk.AttentionSpec

# (id, spec, block_size, num_q_heads, num_kv_heads, head_dim, dtype, decode k_splits)
VARIANTS = [
    ("window-smaller-than-block", Spec(0.125, sliding_window=5), 16, 4, 2, 64, F32, None),
    ("window-equal-to-block", Spec(0.125, sliding_window=16), 16, 4, 1, 64, BF16, 3),
    ("window-spanning-blocks", Spec(0.125, sliding_window=40), 8, 6, 2, 64, F32, 2),
    ("softcap", Spec(0.125, logit_softcap=2.0), 16, 8, 2, 64, F32, None),
    ("alibi", Spec(0.125, use_alibi=True), 16, 8, 2, 64, F16, 2),
    ("sinks", Spec(0.125, use_sinks=True), 8, 4, 2, 64, F32, None),
    ("window-of-one-sinks-split", Spec(0.125, sliding_window=1, use_sinks=True), 8, 4, 2, 64, BF16, 4),
    ("everything", Spec(0.1, sliding_window=24, logit_softcap=5.0, use_alibi=True, use_sinks=True),
     8, 8, 2, 64, F32, 2),
]
VARIANT_PARAMS = [pytest.param(*v[1:], id=v[0]) for v in VARIANTS]


def head_arrays(spec, num_q_heads, rng):
    """(alibi_slopes, sinks) as the spec needs them: BLOOM slopes, sink logits around the
    logits' own scale (one large enough to take most of the mass)."""
    slopes = jnp.asarray(alibi_slopes(num_q_heads)) if spec.use_alibi else None
    sinks = None
    if spec.use_sinks:
        values = rng.standard_normal(num_q_heads).astype(np.float32)
        values[0] = 4.0
        sinks = jnp.asarray(values)
    return slopes, sinks


def _long(block_size):
    return 5 * block_size + 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec,block_size,num_q_heads,num_kv_heads,head_dim,dtype,k_splits", VARIANT_PARAMS)
def test_decode_variant(mode, spec, block_size, num_q_heads, num_kv_heads, head_dim, dtype, k_splits):
    rng = np.random.default_rng(block_size * 7 + num_q_heads)
    kv_lens = [1, block_size - 1, block_size, block_size + 1, _long(block_size), 0]
    b = decode_batch(rng, kv_lens, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads,
                     head_dim=head_dim, block_size=block_size, dtype=dtype,
                     free_outside_window=spec.sliding_window)
    slopes, sinks = head_arrays(spec, num_q_heads, rng)
    heads = dict(spec=spec, alibi_slopes=slopes, sinks=sinks)
    expected = numpy_attention(b, **heads)

    tuning = {} if k_splits is None else dict(k_splits=k_splits, block_kv=16)
    out = pk.paged_attention_from_pool(b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens,
                                       interpret=interpret_flag(mode), **heads, **tuning)
    assert_close(out, expected, dtype, "kernel vs float64 oracle")
    assert np.all(np.asarray(out[-1]) == 0), "padding row (kv_len 0) must be exactly 0"
    ref = pk.paged_attention_reference(b.q, b.k_pages, b.v_pages, b.block_tables, b.kv_lens, **heads)
    assert_close(ref, expected, dtype, "reference vs float64 oracle")


def _mixed_seqs(block_size):
    """Full prefills, a chunk over a cached prefix, decodes (first token, long)."""
    return [
        (2 * block_size + 3, 2 * block_size + 3),
        (11, 3 * block_size + 11),
        (1, block_size + 1),
        (1, 1),
        (1, _long(block_size)),
        (block_size + 1, block_size + 1),
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec,block_size,num_q_heads,num_kv_heads,head_dim,dtype,_", VARIANT_PARAMS)
def test_ragged_variant(mode, spec, block_size, num_q_heads, num_kv_heads, head_dim, dtype, _):
    rng = np.random.default_rng(block_size * 11 + num_q_heads)
    b = make_batch(rng, _mixed_seqs(block_size), num_pad_seqs=1, num_pad_tokens=3,
                   num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                   block_size=block_size, dtype=dtype, free_outside_window=spec.sliding_window)
    slopes, sinks = head_arrays(spec, num_q_heads, rng)
    heads = dict(spec=spec, alibi_slopes=slopes, sinks=sinks)
    expected = numpy_attention(b, **heads)
    end = int(b.query_start_loc[-1])
    group_pad = 1 << (num_q_heads // num_kv_heads - 1).bit_length()  # several q tiles per prefill

    out = pk.ragged_paged_attention_from_pool(
        b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens, b.query_start_loc,
        interpret=interpret_flag(mode), block_q=max(4, 16 // group_pad), block_kv=16, **heads)
    assert_close(out, expected, dtype, "kernel vs float64 oracle")
    assert np.all(np.asarray(out[end:]) == 0), "padding token rows must be exactly 0"
    ref = pk.ragged_paged_attention_reference(b.q, b.k_pages, b.v_pages, b.block_tables,
                                              b.kv_lens, b.query_start_loc, **heads)
    assert_close(ref, expected, dtype, "reference vs float64 oracle")
    assert np.all(np.asarray(ref[end:]) == 0)


def test_window_wider_than_the_context_changes_nothing():
    rng = np.random.default_rng(1)
    b = make_batch(rng, [(5, 37), (1, 20)], num_q_heads=4, num_kv_heads=2, head_dim=32,
                   block_size=8, dtype=F32)
    args = (b.q, b.k_pages, b.v_pages, b.block_tables, b.kv_lens, b.query_start_loc)
    plain = pk.ragged_paged_attention_reference(*args, spec=Spec(0.2))
    wide = pk.ragged_paged_attention_reference(*args, spec=Spec(0.2, sliding_window=38))
    narrow = pk.ragged_paged_attention_reference(*args, spec=Spec(0.2, sliding_window=30))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(wide))
    assert not np.allclose(np.asarray(plain)[:5], np.asarray(narrow)[:5])


def test_sinks_shrink_the_output_by_the_sink_share():
    """With sinks, out = plain_out * sum / (sum + exp(sink)): compare against the plain kernel
    and the plain log-sum-exp computed in float64."""
    rng = np.random.default_rng(2)
    b = decode_batch(rng, [9, 30], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=8,
                     dtype=F32)
    sinks = jnp.asarray([-1.0, 0.0, 1.0, 3.0], jnp.float32)
    args = (b.q, b.kv_pool, b.layer, b.block_tables, b.kv_lens)
    plain = np.asarray(pk.paged_attention_from_pool(*args, spec=Spec(0.2), interpret=True), np.float64)
    with_sinks = np.asarray(pk.paged_attention_from_pool(*args, spec=Spec(0.2, use_sinks=True),
                                                         sinks=sinks, interpret=True), np.float64)
    q = np.asarray(b.q, np.float64)
    pages = np.asarray(b.k_pages, np.float64)
    tables = np.asarray(b.block_tables)
    for s, kv_len in enumerate(np.asarray(b.kv_lens)):
        pos = np.arange(kv_len)
        keys = pages[:, tables[s, pos // 8], pos % 8]  # [KVH, kv_len, D]
        for h in range(4):
            lse = np.log(np.exp(keys[h // 2] @ q[s, h] * 0.2).sum())
            share = 1.0 / (1.0 + np.exp(float(sinks[h]) - lse))
            np.testing.assert_allclose(with_sinks[s, h], plain[s, h] * share, rtol=1e-5, atol=1e-6)


def test_windowed_decode_reads_only_the_window():
    """The whole context outside the window is NaN and its table entries out of range: the
    kernel (loop from the window's first tile) and the reference (window's pages only) do not
    look at it."""
    rng = np.random.default_rng(3)
    spec = Spec(0.125, sliding_window=20)
    b = decode_batch(rng, [200, 64, 7], num_q_heads=4, num_kv_heads=2, head_dim=32,
                     block_size=8, dtype=F32, free_outside_window=20)
    tables = np.asarray(b.block_tables).copy()
    for s, kv_len in enumerate(np.asarray(b.kv_lens)):
        tables[s, : max(0, kv_len - 20) // 8] = 10 ** 6  # never dereferenced
    expected = numpy_attention(b, spec=spec)
    tables = jnp.asarray(tables)
    out = pk.paged_attention_from_pool(b.q, b.kv_pool, b.layer, tables, b.kv_lens, spec=spec,
                                       interpret=True, block_kv=16)
    assert_close(out, expected, F32, "kernel")
    ref = pk.paged_attention_reference(b.q, b.k_pages, b.v_pages, tables, b.kv_lens, spec=spec)
    assert_close(ref, expected, F32, "reference")


@pytest.mark.parametrize("bad,match", [
    (dict(spec=Spec(0.1, use_alibi=True)), r"spec.use_alibi needs alibi_slopes f32\[num_q_heads=4\]"),
    (dict(spec=Spec(0.1), sinks=jnp.zeros(4)), "sinks given but spec.use_sinks is False"),
    (dict(spec=Spec(0.1, use_sinks=True), sinks=jnp.zeros(3)), r"sinks must be a float array of shape \(4,\)"),
    (dict(spec=Spec(0.1, use_alibi=True), alibi_slopes=jnp.zeros(4, jnp.int32)),
     "alibi_slopes must be a float array"),
    (dict(spec=Spec(0.1), sm_scale=0.2), "pass either spec or sm_scale"),
    (dict(spec="plain"), "spec must be an AttentionSpec"),
])
@pytest.mark.parametrize("kind", ["decode", "ragged", "decode-reference", "ragged-reference"])
def test_spec_argument_errors(kind, bad, match):
    q, pool = jnp.zeros((2, 4, 32)), jnp.zeros((1, 2, 2, 4, 8, 32))
    tables, lens, qsl = jnp.zeros((2, 2), jnp.int32), jnp.ones((2,), jnp.int32), jnp.arange(3, dtype=jnp.int32)
    fn = {"decode": lambda **kw: pk.paged_attention_from_pool(q, pool, 0, tables, lens, interpret=True, **kw),
          "ragged": lambda **kw: pk.ragged_paged_attention_from_pool(q, pool, 0, tables, lens, qsl,
                                                                     interpret=True, **kw),
          "decode-reference": lambda **kw: pk.paged_attention_reference_from_pool(q, pool, 0, tables, lens, **kw),
          "ragged-reference": lambda **kw: pk.ragged_paged_attention_reference_from_pool(
              q, pool, 0, tables, lens, qsl, **kw)}[kind]
    with pytest.raises(ValueError, match=match):
        fn(**bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sm_scale=0.0), "sm_scale must be > 0"),
    (dict(sm_scale=0.1, sliding_window=0), "sliding_window must be None or an int >= 1"),
    (dict(sm_scale=0.1, logit_softcap=-1.0), "logit_softcap must be None or > 0"),
])
def test_attention_spec_validates_itself(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Spec(**kwargs)
