"""`PagedKVCache.attend` under shard_map on 4 CPU devices equals the single-device result.

Not collected by the normal run: test_paged_cache.py runs it in a subprocess whose environment
has XLA_FLAGS=--xla_force_host_platform_device_count=4. tp=2: the pool's 2 KV heads split one
per device; tp=4: each KV head replicated twice (the pool holds 4). ALiBi slopes and sinks
split on their head axis like q.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from models.sharding import make_mesh
from tests.kernels import paged_cache_cases as cases


def test_four_cpu_devices():
    assert len(jax.devices()) == 4


@pytest.mark.parametrize("tp,kv_cache_dtype,backend", [
    (2, "auto", "reference"), (4, "int8", "reference"), (2, "fp8", "pallas_interpret"),
])
def test_sharded_equals_single_device(tp, kv_cache_dtype, backend):
    single = cases.run(backend, kv_cache_dtype)
    sharded = cases.run(backend, kv_cache_dtype, mesh=make_mesh(tp))
    for a, b in zip(single, sharded):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kv_cache_dtype", ["int8", "fp8"])
def test_the_runners_pool_operations_on_a_sharded_pool(kv_cache_dtype):
    """What the runner does with its pool, on a KVPool split over 4 devices: allocate sharded,
    set fp8 scales, constrain a step's output pool, copy blocks under shard_map (one prefix spec
    for data and scales), abstract it with its shardings, count its bytes per device."""
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    import pallas_kernels as pk
    from models.sharding import TP_AXIS, kv_pool_sharding, shard_map

    mesh = make_mesh(4)
    layout = pk.KVPoolLayout.create(2, 4, 8, 32, model_dtype=jnp.bfloat16, kv_cache_dtype=kv_cache_dtype)
    pool = layout.allocate(16, kv_pool_sharding(mesh))
    if kv_cache_dtype == "fp8":
        pool = pool.with_scales(np.asarray([0.5, 2.0]), 1.0)
        assert pool.scales.sharding.spec == P(None, None, TP_AXIS)
    k = jnp.ones((16 * 8, 4, 32), jnp.bfloat16) * jnp.arange(16 * 8)[:, None, None].astype(jnp.bfloat16)
    pool = jax.jit(lambda p: pk.write_kv_to_pool(p, 1, k, k, jnp.arange(16 * 8, dtype=jnp.int32)))(pool)
    pool = jax.jit(lambda p: jax.lax.with_sharding_constraint(p, kv_pool_sharding(mesh)))(pool)
    spec, rep = P(None, None, TP_AXIS), P()
    copy = jax.jit(shard_map(lambda p, s, d: p.copy_blocks(s, d), mesh, in_specs=(spec, rep, rep), out_specs=spec),
                   donate_argnums=0)
    src, dst = jnp.asarray([3, 5], jnp.int32), jnp.asarray([9, 10], jnp.int32)
    before = jax.tree.map(np.asarray, pool)
    pool = copy(pool, src, dst)
    after = jax.tree.map(np.asarray, pool)
    np.testing.assert_array_equal(after.data[:, :, :, [9, 10]].astype(np.float32),
                                  before.data[:, :, :, [3, 5]].astype(np.float32))
    np.testing.assert_array_equal(after.scales[..., [9, 10], :] if kv_cache_dtype == "int8" else after.scales,
                                  before.scales[..., [3, 5], :] if kv_cache_dtype == "int8" else before.scales)
    abstract = pool.abstract()
    assert abstract.data.sharding == pool.data.sharding and abstract.scales.sharding == pool.scales.sharding
    assert pool.nbytes_per_device() * 4 == pool.nbytes
