"""The KV pool pytree: layouts and their bytes, allocation, fp8 scales, quantizing writes,
copy-on-write block copies. (That quantized writes and copies run in place under donation is
checked on the GPU target, in test_deviceless_compile.py: XLA's CPU backend widens bf16 / fp8
scatters to f32 and copies the pool.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels as pk

L, HKV, NB, BS, D = 3, 2, 12, 8, 64


def _layout(kv_cache_dtype, head_dim=D, model_dtype=jnp.bfloat16, num_kv_heads=HKV):
    return pk.KVPoolLayout.create(L, num_kv_heads, BS, head_dim, model_dtype=model_dtype,
                                  kv_cache_dtype=kv_cache_dtype)


@pytest.mark.parametrize("kv_cache_dtype,dtype,scales", [
    ("auto", jnp.bfloat16, None),
    ("fp8", jnp.float8_e4m3fn, ((L, 2, HKV), jnp.float32)),
    ("fp8_e4m3", jnp.float8_e4m3fn, ((L, 2, HKV), jnp.float32)),
    ("fp8_e5m2", jnp.float8_e5m2, ((L, 2, HKV), jnp.float32)),
    ("int8", jnp.int8, ((L, 2, HKV, NB, BS), jnp.bfloat16)),
])
def test_allocate_shapes_dtypes_and_initial_scales(kv_cache_dtype, dtype, scales):
    pool = _layout(kv_cache_dtype).allocate(NB)
    assert pool.data.shape == (L, 2, HKV, NB, BS, D) and pool.data.dtype == dtype
    assert not np.any(np.asarray(pool.data.astype(jnp.float32)))
    if scales is None:
        assert pool.scales is None
    else:
        assert pool.scales.shape == scales[0] and pool.scales.dtype == scales[1]
        fill = 1.0 if kv_cache_dtype.startswith("fp8") else 0.0  # vLLM's default fp8 scale
        assert np.all(np.asarray(pool.scales, np.float32) == fill)
    assert pool.nbytes == _layout(kv_cache_dtype).bytes_per_block * NB + _layout(kv_cache_dtype).fixed_bytes
    abstract = _layout(kv_cache_dtype).abstract(NB)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(
        lambda x: (x.shape, x.dtype), pool.abstract())


@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2", "int8"])
def test_quantized_pools_hold_at_least_1_9x_the_blocks_of_bf16(kv_cache_dtype, head_dim):
    budget = 10 * 2 ** 30
    bf16 = _layout("auto", head_dim, jnp.bfloat16, num_kv_heads=8).num_blocks_for_bytes(budget)
    quantized = _layout(kv_cache_dtype, head_dim, jnp.bfloat16, num_kv_heads=8).num_blocks_for_bytes(budget)
    assert quantized >= 1.9 * bf16, (quantized, bf16)


def test_bytes_per_block_counts_every_layer_head_and_scale():
    assert _layout("auto").bytes_per_block == L * 2 * HKV * BS * D * 2
    assert _layout("auto", model_dtype=jnp.float32).bytes_per_block == L * 2 * HKV * BS * D * 4
    assert _layout("fp8").bytes_per_block == L * 2 * HKV * BS * D
    assert _layout("fp8").fixed_bytes == L * 2 * HKV * 4
    assert _layout("int8").bytes_per_block == L * 2 * HKV * BS * (D + 2)
    layout = _layout("fp8")
    assert layout.num_blocks_for_bytes(layout.fixed_bytes + 5 * layout.bytes_per_block + 1) == 5
    assert layout.num_blocks_for_bytes(10) == 0


@pytest.mark.parametrize("call,match", [
    (lambda: pk.KVPoolLayout.create(L, HKV, BS, D, model_dtype=jnp.bfloat16, kv_cache_dtype="fp4"),
     "kv_cache_dtype must be one of"),
    (lambda: pk.KVPoolLayout(0, HKV, BS, D, jnp.bfloat16), "num_layers must be an int >= 1"),
    (lambda: pk.KVPoolLayout(L, HKV, BS, D, jnp.int32), "dtype int32 is not supported as KV storage"),
    (lambda: _layout("auto").allocate(0), "num_blocks must be an int >= 1"),
    (lambda: pk.KVPool(jnp.zeros((L, 2, HKV, NB, BS, D), jnp.int8)), "needs scales"),
    (lambda: pk.KVPool(jnp.zeros((L, 2, HKV, NB, BS, D)), jnp.ones((L, 2, HKV))), "has no scales"),
    (lambda: pk.KVPool(jnp.zeros((L, 2, HKV, NB, BS, D), jnp.float8_e4m3fn), jnp.ones((L, 2, HKV + 1))),
     r"needs scales float32\[3, 2, 2\]"),
    (lambda: pk.KVPool(jnp.zeros((L, 3, HKV, NB, BS, D))), "kv_pool must be"),
])
def test_layout_and_pool_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_with_scales_expands_per_layer_and_per_head_scales_to_pool_heads():
    pool = pk.KVPoolLayout.create(2, 4, BS, D, model_dtype=jnp.bfloat16, kv_cache_dtype="fp8").allocate(NB)
    per_layer = pool.with_scales(jnp.asarray([0.5, 2.0]), 3.0)
    np.testing.assert_array_equal(np.asarray(per_layer.scales[:, 0]), [[0.5] * 4, [2.0] * 4])
    np.testing.assert_array_equal(np.asarray(per_layer.scales[:, 1]), np.full((2, 4), 3.0))
    # 2 model KV heads, each held twice by a pool of 4 (tensor parallelism past num_kv_heads)
    per_head = pool.with_scales(np.asarray([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 4)))
    np.testing.assert_array_equal(np.asarray(per_head.scales[:, 0]), [[1, 1, 2, 2], [3, 3, 4, 4]])
    with pytest.raises(ValueError, match="k_scale must be a scalar"):
        pool.with_scales(np.ones((3,)), 1.0)
    with pytest.raises(ValueError, match="v_scale values must be finite and > 0"):
        pool.with_scales(1.0, 0.0)
    with pytest.raises(ValueError, match="apply to fp8 pools"):
        _layout("int8").allocate(NB).with_scales(1.0, 1.0)


def _new_kv(rng, num_tokens, scale=1.0):
    return (jnp.asarray(scale * rng.standard_normal((num_tokens, HKV, D)), jnp.float32),
            jnp.asarray(scale * rng.standard_normal((num_tokens, HKV, D)), jnp.float32))


@pytest.mark.parametrize("kv_cache_dtype,np_dtype", [("fp8", ml_dtypes.float8_e4m3fn),
                                                     ("fp8_e5m2", ml_dtypes.float8_e5m2)])
def test_fp8_write_divides_by_the_layer_scale_and_saturates(kv_cache_dtype, np_dtype):
    rng = np.random.default_rng(0)
    pool = _layout(kv_cache_dtype).allocate(NB).with_scales(np.asarray([1.0, 0.25, 4.0]), 2.0)
    k, v = _new_kv(rng, 6, scale=3.0)
    k = k.at[0, 0, 0].set(1e6).at[0, 0, 1].set(-1e6)  # far past the format's range
    slots = jnp.asarray([3, 17, -1, 40, 95, 8], jnp.int32)
    out = pk.write_kv_to_pool(pool, 1, k, v, slots)
    limit = float(ml_dtypes.finfo(np_dtype).max)
    for t, slot in enumerate(np.asarray(slots)):
        if slot < 0:
            continue
        stored = np.asarray(out.data[1, :, :, slot // BS, slot % BS].astype(jnp.float32))  # [2, HKV, D]
        for i, (x, scale) in enumerate(((k, 0.25), (v, 2.0))):
            want = np.clip(np.asarray(x[t]) / scale, -limit, limit).astype(np_dtype).astype(np.float32)
            np.testing.assert_array_equal(stored[i], want)
    assert np.asarray(out.data[1, 0, 0, 0, 3, :2].astype(jnp.float32)).tolist() == [limit, -limit]
    assert not np.any(np.asarray(out.data.astype(jnp.float32))[[0, 2]])  # other layers untouched
    np.testing.assert_array_equal(np.asarray(out.scales), np.asarray(pool.scales))


def test_int8_write_stores_per_token_scales_and_rounds_to_nearest():
    rng = np.random.default_rng(1)
    pool = _layout("int8").allocate(NB)
    k, v = _new_kv(rng, 5, scale=2.0)
    k = k.at[1, 1].set(0.0)  # an all-zero row: scale 1, values 0
    slots = jnp.asarray([0, 9, -3, 50, 94], jnp.int32)
    out = pk.write_kv_to_pool(pool, 2, k, v, slots)
    for t, slot in enumerate(np.asarray(slots)):
        if slot < 0:
            continue
        for i, x in enumerate((k, v)):
            rows = np.asarray(x[t], np.float64)  # [HKV, D]
            q = np.asarray(out.data[2, i, :, slot // BS, slot % BS], np.float64)
            s = np.asarray(out.scales[2, i, :, slot // BS, slot % BS].astype(jnp.float32), np.float64)
            absmax = np.abs(rows).max(axis=-1)
            want_scale = np.where(absmax > 0, absmax / 127, 1.0).astype(ml_dtypes.bfloat16).astype(np.float64)
            np.testing.assert_array_equal(s, want_scale)
            np.testing.assert_array_equal(q, np.clip(np.round(rows / s[:, None]), -127, 127))
            assert np.all(np.abs(q * s[:, None] - rows) <= s[:, None] * 0.5 + absmax[:, None] * 2 ** -8)
    assert not np.any(np.asarray(out.data[:2].astype(jnp.float32)))
    assert not np.any(np.asarray(out.scales[:2].astype(jnp.float32)))


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8", "int8"])
def test_copy_blocks_copies_data_and_scales_of_every_layer(kv_cache_dtype):
    rng = np.random.default_rng(2)
    pool = _layout(kv_cache_dtype).allocate(NB)
    k, v = _new_kv(rng, NB * BS)
    for layer in range(L):
        pool = pk.write_kv_to_pool(pool, layer, k * (layer + 1), v, jnp.arange(NB * BS, dtype=jnp.int32))
    src, dst = jnp.asarray([2, 5, 2], jnp.int32), jnp.asarray([7, 1, 7], jnp.int32)
    out = pk.copy_blocks(pool, src, dst)
    before = jax.tree.map(np.asarray, pool)
    after = jax.tree.map(np.asarray, out)
    for s, d in ((2, 7), (5, 1)):
        np.testing.assert_array_equal(after.data[:, :, :, d].astype(np.float32),
                                      before.data[:, :, :, s].astype(np.float32))
        if kv_cache_dtype == "int8":
            np.testing.assert_array_equal(after.scales[:, :, :, d], before.scales[:, :, :, s])
    untouched = [b for b in range(NB) if b not in (1, 7)]
    np.testing.assert_array_equal(after.data[:, :, :, untouched].astype(np.float32),
                                  before.data[:, :, :, untouched].astype(np.float32))
    if kv_cache_dtype == "auto":  # a bare array stays a bare array
        bare = pk.copy_blocks(pool.data, src, dst)
        assert isinstance(bare, jax.Array)
        np.testing.assert_array_equal(np.asarray(bare.astype(jnp.float32)), after.data.astype(np.float32))
    else:
        with pytest.raises(ValueError, match="pass the KVPool, not its bare data array"):
            pk.copy_blocks(pool.data, src, dst)


def test_sharded_allocation_splits_every_pool_array_on_kv_heads():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("tp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, "tp"))
    pool = _layout("int8").allocate(NB, sharding)
    assert pool.data.sharding == sharding
    assert pool.scales.sharding.spec == jax.sharding.PartitionSpec(None, None, "tp")
    assert pool.nbytes_per_device() == pool.nbytes
    with pytest.raises(ValueError, match="only be sharded on its kv-head axis"):
        _layout("int8").allocate(NB, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("tp")))
