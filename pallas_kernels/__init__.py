"""Paged attention for pagedjax: Pallas kernels (Triton backend on NVIDIA GPUs, interpret
mode elsewhere), the plain-jnp references that are also the CPU fast path, the KV pool
(optionally fp8 / int8) and its writes, and CUDA lowering / sm_90 compilation without a GPU.

KV pool layout: `KVPool.data [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]`
(index 0 = K) plus `KVPool.scales` for quantized pools (pallas_kernels/kv_pool.py).
"""

from pallas_kernels.attention_spec import AttentionSpec
from pallas_kernels._common import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS
from pallas_kernels.quant_layout import QuantLayout, dequantize_reference, quantize_activations_fp8
from pallas_kernels.quant_matmul import quant_matmul, quant_matmul_reference
from pallas_kernels.kv_cache import copy_blocks, write_kv, write_kv_to_pool
from pallas_kernels.kv_pool import KV_CACHE_DTYPES, KVPool, KVPoolLayout, LayerKV, storage_dtype
from pallas_kernels.lowering import KernelConfig, lower_for_cuda
from pallas_kernels.paged_attention import (
    paged_attention, paged_attention_from_pool, paged_attention_reference,
    paged_attention_reference_from_pool)
from pallas_kernels.ragged_paged_attention import (
    ragged_paged_attention, ragged_paged_attention_from_pool, ragged_paged_attention_reference,
    ragged_paged_attention_reference_from_pool)

__all__ = [
    "AttentionSpec",
    "copy_blocks",
    "dequantize_reference",
    "KernelConfig",
    "KV_CACHE_DTYPES",
    "KVPool",
    "KVPoolLayout",
    "LayerKV",
    "lower_for_cuda",
    "paged_attention",
    "paged_attention_from_pool",
    "paged_attention_reference",
    "paged_attention_reference_from_pool",
    "quant_matmul",
    "quant_matmul_reference",
    "quantize_activations_fp8",
    "QuantLayout",
    "ragged_paged_attention",
    "ragged_paged_attention_from_pool",
    "ragged_paged_attention_reference",
    "ragged_paged_attention_reference_from_pool",
    "storage_dtype",
    "SUPPORTED_BLOCK_SIZES",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "write_kv",
    "write_kv_to_pool",
]
