"""Writing new K/V through slot_mapping: placement, padding slots, in-place under donation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk

L, HKV, NB, BS, D = 3, 2, 12, 8, 64


def _new_kv(rng, num_tokens):
    k = rng.standard_normal((num_tokens, HKV, D)).astype(np.float32)
    v = rng.standard_normal((num_tokens, HKV, D)).astype(np.float32)
    return k, v


def test_write_kv_to_pool_places_tokens_and_skips_negative_slots():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((L, 2, HKV, NB, BS, D)).astype(np.float32)
    slots = rng.permutation(NB * BS)[:20].astype(np.int32)
    slots[[3, 11]] = [-1, -7]  # padding; -1 must not wrap to the last slot
    k, v = _new_kv(rng, len(slots))

    out = np.asarray(pk.write_kv_to_pool(jnp.asarray(pool), 1, jnp.asarray(k), jnp.asarray(v),
                                         jnp.asarray(slots)))
    expected = pool.copy()
    for t, slot in enumerate(slots):
        if slot >= 0:
            expected[1, 0, :, slot // BS, slot % BS] = k[t]
            expected[1, 1, :, slot // BS, slot % BS] = v[t]
    np.testing.assert_array_equal(out, expected)


def test_write_kv_per_array_layout_matches_pool_layout():
    rng = np.random.default_rng(1)
    pool = jnp.asarray(rng.standard_normal((1, 2, HKV, NB, BS, D)), jnp.bfloat16)
    slots = jnp.asarray([5, -1, 17, 95], jnp.int32)
    k, v = map(jnp.asarray, _new_kv(rng, 4))  # float32, cast to the pages' bfloat16
    k_pages, v_pages = pk.write_kv(pool[0, 0], pool[0, 1], k, v, slots)
    new_pool = pk.write_kv_to_pool(pool, 0, k, v, slots)
    assert k_pages.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(k_pages), np.asarray(new_pool[0, 0]))
    np.testing.assert_array_equal(np.asarray(v_pages), np.asarray(new_pool[0, 1]))
    assert not np.array_equal(np.asarray(k_pages), np.asarray(pool[0, 0]))


def test_write_is_in_place_when_the_pool_is_donated():
    """Inside a jit that donates the pool, the scatter reuses the pool's buffer: temporary
    memory is far below the pool's size, and the donated input is consumed."""
    num_layers, num_blocks = 4, 512
    pool = jnp.zeros((num_layers, 2, HKV, num_blocks, BS, D), jnp.float32)  # 16 MiB
    num_tokens = 16
    k = jnp.ones((num_tokens, HKV, D))
    slots = jnp.arange(num_tokens, dtype=jnp.int32) * 3

    def step(pool, k, v, slots):
        for layer in range(num_layers):
            pool = pk.write_kv_to_pool(pool, layer, k, v, slots)
        return pool

    compiled = jax.jit(step, donate_argnums=0).lower(pool, k, k, slots).compile()
    stats = compiled.memory_analysis()
    assert stats.temp_size_in_bytes < pool.nbytes // 100, stats
    assert stats.alias_size_in_bytes == pool.nbytes, stats
    out = compiled(pool, k, k, slots)
    assert pool.is_deleted()
    assert float(out[2, 1, 0, 0, 3].sum()) == D  # slot 3 = block 0, offset 3


def test_reference_step_reads_the_layer_without_copying_it():
    """The CPU path: write, then attend with `kv_pool[layer, 0]` slices inside one jit; XLA
    fuses the slices into the gathers, so temporaries stay far below one layer's size."""
    num_blocks, num_seqs, width = 2048, 4, 4
    pool = jnp.zeros((2, 2, HKV, num_blocks, BS, D), jnp.float32)  # 16 MiB, 8 MiB a layer
    q = jnp.ones((num_seqs, 4, D))
    kv = jnp.ones((num_seqs, HKV, D))
    tables = jnp.zeros((num_seqs, width), jnp.int32)
    lens = jnp.ones((num_seqs,), jnp.int32)

    def step(pool, q, k, v, slots):
        pool = pk.write_kv_to_pool(pool, 1, k, v, slots)
        return pool, pk.paged_attention_reference(q, pool[1, 0], pool[1, 1], tables, lens)

    stats = jax.jit(step, donate_argnums=0).lower(
        pool, q, kv, kv, jnp.arange(num_seqs, dtype=jnp.int32)).compile().memory_analysis()
    assert stats.temp_size_in_bytes < pool.nbytes // 2 // 10, stats


@pytest.mark.parametrize("bad,match", [
    (dict(slot_mapping=jnp.zeros((4,), jnp.float32)), "slot_mapping must be i32"),
    (dict(k=jnp.zeros((4, HKV + 1, D))), r"k and v must be \[num_tokens, num_kv_heads, head_dim\]"),
    (dict(layer=L), "layer must be a static int"),
])
def test_write_errors(bad, match):
    args = dict(kv_pool=jnp.zeros((L, 2, HKV, NB, BS, D)), layer=0, k=jnp.zeros((4, HKV, D)),
                v=jnp.zeros((4, HKV, D)), slot_mapping=jnp.zeros((4,), jnp.int32))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        pk.write_kv_to_pool(**args)
