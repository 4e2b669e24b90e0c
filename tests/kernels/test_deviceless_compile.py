"""sm_90 (H100 / H200) compilation on a machine without a GPU: every kernel configuration the
engine can pick, and the interpret tests' cases, go through Triton -> PTX -> ptxas -> cubin.

Needs `jax-cuda12-plugin` (== jax's version) and `nvidia-cuda-nvcc-cu12`, both in the `test`
extra, and JAX_PLATFORMS=cpu (tests/conftest.py sets it): without them these tests FAIL, they
are not skipped. See tests/kernels/compile_configs.py for how the configurations were chosen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels as pk
from pallas_kernels import deviceless, tiles
from tests.kernels.compile_configs import default_configs, heaviest_configs, interpret_cases

LIMITS = tiles.target_limits("h100")


def _rows_and_block_kv(config: pk.KernelConfig) -> tuple[int, int]:
    """The q rows and KV tile of the config's one program, as the kernel picks them."""
    group = config.num_q_heads // config.num_kv_heads
    group_pad = 1 << (group - 1).bit_length()
    tuning = dict(config.tuning)
    kv_dtype = pk.storage_dtype(config.kv_cache_dtype, config.dtype)
    block_kv = tuning.get("block_kv") or tiles.default_block_kv(
        config.kind, config.head_dim, q_dtype=config.dtype, kv_dtype=kv_dtype)
    if config.kind == "decode":
        return max(16, group_pad), block_kv
    block_q = tuning.get("block_q") or tiles.default_block_q(
        group, config.head_dim, config.num_tokens, config.num_seqs, q_dtype=config.dtype, kv_dtype=kv_dtype)
    return block_q * group_pad, block_kv


def _compile_and_check(config: pk.KernelConfig, *, kernel_stats: bool) -> deviceless.KernelStats:
    result = deviceless.compile_for_target(config.function(), *config.abstract_args(),
                                           kernel_stats=kernel_stats)
    [kernel] = result.triton_kernels
    prefix = "paged_attention_" if config.kind == "decode" else "ragged_paged_attention_"
    assert kernel.name.startswith(prefix), kernel
    rows, block_kv = _rows_and_block_kv(config)
    estimate = tiles.shared_memory_bytes(rows=rows, head_dim=config.head_dim, block_kv=block_kv,
                                         q_dtype=config.dtype,
                                         kv_dtype=pk.storage_dtype(config.kv_cache_dtype, config.dtype),
                                         num_stages=dict(config.tuning).get("num_stages", 2))
    assert kernel.shared_memory_bytes <= estimate <= LIMITS.shared_memory_per_block_optin, (kernel, estimate)
    assert kernel.threads_per_block <= LIMITS.threads_per_block_limit
    if kernel_stats:
        assert 0 < kernel.registers <= 255, kernel
    assert result.memory_analysis().temp_size_in_bytes < 64 << 20  # only flash-decoding partials
    return kernel


def test_cuda_plugin_and_ptxas_are_installed():
    """Fails (does not skip) where the `test` extra is not installed."""
    device = deviceless.target_device("h100")
    assert device.platform == "gpu" and "H100" in device.device_kind
    assert deviceless.ptxas_path().is_file()
    assert LIMITS.compute_capability == (9, 0) and LIMITS.shared_memory_per_block_optin == 232448


# Most bytes a thread may spill where the defaults were chosen not to spill: measured 0, except
# 12 at 32 ragged rows x head_dim 128 (ptxas stops at 128 registers there).
MAX_SPILL_BYTES = 32


def _spill_free(config: pk.KernelConfig) -> bool:
    """Where the defaults were chosen not to spill registers (bf16 / f16 q, head_dim <= 128,
    plain spec, pool in q's dtype); elsewhere spills of 16-500 bytes occur (float32's IEEE
    dots, head_dim 256 at 4 warps, every feature at once) and are only reported."""
    return (jnp.dtype(config.dtype).itemsize == 2 and config.head_dim <= 128 and config.spec is None
            and config.kv_cache_dtype == "auto")


@pytest.mark.parametrize("config", default_configs() + heaviest_configs(), ids=lambda c: c.label)
def test_engine_default_configs_compile_for_sm90(config):
    # NOTE: ptxas -v (registers, spills) costs ~0.4 s a kernel: only where it is asserted.
    kernel = _compile_and_check(config, kernel_stats=_spill_free(config))
    if _spill_free(config):
        assert kernel.spill_store_bytes <= MAX_SPILL_BYTES, kernel


@pytest.mark.parametrize("config", interpret_cases(), ids=lambda c: c.label)
def test_interpret_test_cases_compile_for_sm90(config):
    _compile_and_check(config, kernel_stats=False)


def test_the_compiler_agrees_with_the_rejection(monkeypatch):
    """main's tuning case (ragged, block_q=128, block_kv=128, num_stages=3, 16 q heads per KV
    head) lowers but needs 589,824 bytes of shared memory: `tiles.check_fits` rejects it
    (test_tiles.py); without the check, XLA refuses it with the figure the estimate gives."""
    monkeypatch.setattr(tiles, "check_fits", lambda **kw: None)
    config = pk.KernelConfig("ragged", 4, 16, 1, 128, 16, 32, num_tokens=256,
                             tuning=dict(block_q=128, block_kv=128, num_stages=3))
    jax.clear_caches()  # NOTE: the unchecked trace must not outlive this test in jit's cache
    try:
        with pytest.raises(Exception, match=r"Shared memory size limit exceeded: requested 589824"):
            deviceless.compile_for_target(config.function(), *config.abstract_args(), kernel_stats=False)
    finally:
        jax.clear_caches()


def test_compile_for_target_reports_kernel_stats():
    config = pk.KernelConfig("ragged", 4, 8, 2, 128, 16, 16, num_tokens=64, kv_cache_dtype="int8")
    result = deviceless.compile_for_target(config.function(), *config.abstract_args())
    [kernel] = result.triton_kernels
    assert kernel.name == "ragged_paged_attention_bq16_bkv32_int8" and kernel.triton
    assert kernel.grid == (64 // 16 + 4, 2, 1) and kernel.threads_per_block == 128
    assert kernel.shared_memory_bytes > 0 and kernel.registers > 32
    assert kernel.spill_store_bytes == 0 and kernel.stack_frame_bytes is not None
    assert result.memory_analysis().argument_size_in_bytes > 0
    assert result.target == "h100" and isinstance(result.compiled, jax.stages.Compiled)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8", "int8"])
def test_quantized_writes_and_block_copies_run_in_place_on_the_gpu(kv_cache_dtype):
    """A step that writes every layer and copies blocks, pool donated: on sm_90 the temporary
    memory is a tiny fraction of the pool and the pool is aliased to the output."""
    layout = pk.KVPoolLayout.create(4, 2, 16, 128, model_dtype=jnp.bfloat16, kv_cache_dtype=kv_cache_dtype)
    new = jax.ShapeDtypeStruct((64, 2, 128), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((64,), jnp.int32)

    def step(pool, k, v, slots):
        for layer in range(4):
            pool = pk.write_kv_to_pool(pool, layer, k, v, slots)
        return pool.copy_blocks(slots[:8] // 16, slots[8:16] // 16)

    device = deviceless.target_device()
    args = deviceless.place_on_device((layout.abstract(1024), new, new, ids), device)
    stats = jax.jit(step, donate_argnums=0).trace(*args).lower().compile().memory_analysis()
    pool_bytes = layout.bytes_per_block * 1024 + layout.fixed_bytes
    assert stats.alias_size_in_bytes == pool_bytes, stats
    assert stats.temp_size_in_bytes < pool_bytes // 50, stats
