"""`PagedKVCache.attend` (models/attention.py) with every spec feature, over every pool format,
with each backend, against dense attention; and under shard_map on emulated CPU devices."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.kernels import paged_cache_cases as cases

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# K/V ~ N(0, 1) through this scenario, max |out - dense| over seeds 0-2: float32 pool 4e-7,
# int8 0.016, fp8_e4m3 0.11 (with scale 1.0).
TOLERANCE = {"auto": 2e-5, "int8": 0.04, "fp8": 0.25}


@pytest.mark.parametrize("kv_cache_dtype,backend", [
    ("auto", "reference"), ("auto", "pallas_interpret"), ("int8", "reference"), ("fp8", "pallas_interpret")])
def test_paged_cache_matches_dense_attention(kv_cache_dtype, backend):
    prefill, decode = cases.run(backend, kv_cache_dtype)
    want_prefill, want_decode = cases.dense()
    tol = TOLERANCE[kv_cache_dtype]
    np.testing.assert_allclose(prefill, want_prefill, atol=tol, rtol=tol)
    np.testing.assert_allclose(decode, want_decode, atol=tol, rtol=tol)


def test_backends_agree_on_a_quantized_pool():
    ref = cases.run("reference", "int8")
    kernel = cases.run("pallas_interpret", "int8")
    for a, b in zip(ref, kernel):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_a_bare_array_pool_still_works():
    """The runner's pre-KVPool contract: a bare data array in, a bare array out."""
    import jax
    from models.attention import PagedAttentionMetadata, PagedKVCache
    import pallas_kernels as pk

    pool = jnp.zeros((1, 2, 2, 4, 8, 32))
    meta = PagedAttentionMetadata(jnp.asarray([0, 1], jnp.int32), jnp.asarray([[1], [2]], jnp.int32),
                                  jnp.asarray([1, 1], jnp.int32), jnp.asarray([0, 1, 2], jnp.int32),
                                  decode_only=True)
    q = jnp.ones((2, 4, 32))
    out, cache = PagedKVCache(pool, meta).attend(0, q, q[:, :2], q[:, :2], None, pk.AttentionSpec(0.1))
    assert isinstance(cache.kv_pool, jax.Array) and cache.kv_pool.shape == pool.shape
    assert out.shape == q.shape


def test_sharded_paged_cache_on_four_cpu_devices():
    """tests/kernels/_sharded_cache_checks.py in a fresh interpreter with 4 host CPU devices."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    for name in [k for k in env if k.startswith("PYTEST_XDIST") or k == "PYTEST_CURRENT_TEST"]:
        del env[name]
    proc = subprocess.run([sys.executable, "-m", "pytest", os.path.join("tests", "kernels", "_sharded_cache_checks.py"),
                           "-q", "-p", "no:cacheprovider", "-rfEs"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = f"--- stdout ---\n{proc.stdout[-20000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, output
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\b6 passed", summary) and "skipped" not in summary, output
