"""Bad shapes, dtypes and tuning knobs raise ValueError naming the argument (checked while
tracing: nothing here runs a kernel)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels as pk

S, HQ, HKV, D, NB, BS, W = 3, 8, 2, 64, 16, 16, 4


def _sds(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _args(**overrides):
    """Shape-only arguments of a decode/ragged call; `overrides` replaces any of them."""
    args = dict(q=_sds((S, HQ, D)), kv_pool=_sds((2, 2, HKV, NB, BS, D)),
                block_tables=_sds((S, W), jnp.int32), kv_lens=_sds((S,), jnp.int32),
                query_start_loc=_sds((S + 1,), jnp.int32))
    args.update(overrides)
    return args


def _trace_decode(layer=0, tuning=None, **overrides):
    a = _args(**overrides)
    fn = lambda q, pool, bt, lens: pk.paged_attention_from_pool(  # noqa: E731
        q, pool, layer, bt, lens, interpret=True, **(tuning or {}))
    return jax.jit(fn).trace(a["q"], a["kv_pool"], a["block_tables"], a["kv_lens"])


def _trace_ragged(layer=0, tuning=None, **overrides):
    a = _args(**overrides)
    fn = lambda q, pool, bt, lens, qsl: pk.ragged_paged_attention_from_pool(  # noqa: E731
        q, pool, layer, bt, lens, qsl, interpret=True, **(tuning or {}))
    return jax.jit(fn).trace(a["q"], a["kv_pool"], a["block_tables"], a["kv_lens"],
                             a["query_start_loc"])


BAD_ARGS = [
    ("head_dim 48 is not supported", dict(q=_sds((S, HQ, 48)), kv_pool=_sds((2, 2, HKV, NB, BS, 48)))),
    ("head_dim mismatch: q has 128", dict(q=_sds((S, HQ, 128)))),
    ("block_size 12 is not supported", dict(kv_pool=_sds((2, 2, HKV, NB, 12, D)))),
    (r"num_q_heads \(8\) must be a multiple of num_kv_heads \(3\)",
     dict(kv_pool=_sds((2, 2, 3, NB, BS, D)))),
    ("dtype mismatch: q is bfloat16", dict(q=_sds((S, HQ, D), jnp.bfloat16))),
    ("dtype int32 is not supported", dict(q=_sds((S, HQ, D), jnp.int32),
                                          kv_pool=_sds((2, 2, HKV, NB, BS, D), jnp.int32))),
    ("block_tables must be int32", dict(block_tables=_sds((S, W), jnp.int16))),
    ("block_tables must have 2 dimensions", dict(block_tables=_sds((S * W,), jnp.int32))),
    ("kv_lens must have shape", dict(kv_lens=_sds((S + 1,), jnp.int32))),
    ("kv_lens must be int32", dict(kv_lens=_sds((S,), jnp.float32))),
    ("kv_pool must be", dict(kv_pool=_sds((2, HKV, NB, BS, D)))),
    ("q must be", dict(q=_sds((S, HQ * D)))),
]


@pytest.mark.parametrize("match,overrides", BAD_ARGS, ids=[m.split(" ")[0] + str(i)
                                                            for i, (m, _) in enumerate(BAD_ARGS)])
@pytest.mark.parametrize("trace", [_trace_decode, _trace_ragged], ids=["decode", "ragged"])
def test_bad_arguments(trace, match, overrides):
    with pytest.raises(ValueError, match=match):
        trace(**overrides)


def test_decode_specific_errors():
    with pytest.raises(ValueError, match="q has 5 rows but block_tables has 3 sequences"):
        _trace_decode(q=_sds((5, HQ, D)))
    with pytest.raises(ValueError, match=r"layer must be a static int in \[0, 2\)"):
        _trace_decode(layer=2)


def test_ragged_specific_errors():
    with pytest.raises(ValueError, match="query_start_loc must have shape"):
        _trace_ragged(query_start_loc=_sds((S,), jnp.int32))
    _trace_ragged(q=_sds((40, HQ, D)))  # any number of tokens is fine


@pytest.mark.parametrize("trace,tuning,match", [
    (_trace_decode, dict(block_kv=8), "block_kv must be a power of two >= 16"),
    (_trace_decode, dict(block_kv=48), "block_kv must be a power of two >= 16"),
    (_trace_decode, dict(k_splits=0), "k_splits must be an int >= 1"),
    (_trace_decode, dict(num_warps=3), "num_warps must be a power of two"),
    (_trace_decode, dict(num_stages=0), "num_stages must be an int >= 1"),
    (_trace_ragged, dict(block_q=3), "block_q must be a power of two"),
    (_trace_ragged, dict(block_q=2), r"block_q \(2\) x padded group \(4\) must be >= 16"),
    (_trace_ragged, dict(block_kv=8), "block_kv must be a power of two >= 16"),
])
def test_bad_tuning(trace, tuning, match):
    with pytest.raises(ValueError, match=match):
        trace(tuning=tuning)


def test_pages_api_errors():
    q, pages = jnp.zeros((S, HQ, D)), jnp.zeros((HKV, NB, BS, D))
    tables, lens = jnp.zeros((S, W), jnp.int32), jnp.ones((S,), jnp.int32)
    with pytest.raises(ValueError, match="v_pages .* must match k_pages"):
        pk.paged_attention(q, pages, pages[:, :8], tables, lens)
    with pytest.raises(ValueError, match="k_pages must be"):
        pk.paged_attention_reference(q, pages[0], pages[0], tables, lens)


def test_references_accept_any_head_dim_and_block_size():
    """Only the kernels are restricted; the jnp references (the CPU path) take any shape."""
    q, pages = jnp.ones((S, HQ, 48)), jnp.ones((HKV, NB, 12, 48))
    tables, lens = jnp.zeros((S, W), jnp.int32), jnp.ones((S,), jnp.int32)
    out = pk.paged_attention_reference(q, pages, pages, tables, lens)
    assert out.shape == q.shape and bool(jnp.all(out == 1))
