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
