"""Paged attention for pagedjax: Pallas kernels (Triton backend on NVIDIA GPUs, interpret
mode elsewhere) and the plain-jnp references that are also the CPU fast path.

KV pool layout: [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim] (index 0 = K).
"""

from pallas_kernels.attention_spec import AttentionSpec
from pallas_kernels._common import SUPPORTED_BLOCK_SIZES, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS
from pallas_kernels.kv_cache import write_kv, write_kv_to_pool
from pallas_kernels.lowering import lower_for_cuda
from pallas_kernels.quant_layout import QuantLayout, dequantize_reference, quantize_activations_fp8
from pallas_kernels.quant_matmul import quant_matmul, quant_matmul_reference
from pallas_kernels.paged_attention import (
    paged_attention, paged_attention_from_pool, paged_attention_reference)
from pallas_kernels.ragged_paged_attention import (
    ragged_paged_attention, ragged_paged_attention_from_pool, ragged_paged_attention_reference)

__all__ = [
    "AttentionSpec",
    "QuantLayout",
    "SUPPORTED_BLOCK_SIZES",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "dequantize_reference",
    "lower_for_cuda",
    "paged_attention",
    "paged_attention_from_pool",
    "paged_attention_reference",
    "quant_matmul",
    "quant_matmul_reference",
    "quantize_activations_fp8",
    "ragged_paged_attention",
    "ragged_paged_attention_from_pool",
    "ragged_paged_attention_reference",
    "write_kv",
    "write_kv_to_pool",
]
