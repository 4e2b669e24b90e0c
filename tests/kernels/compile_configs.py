"""The kernel configurations compiled for sm_90 (test_deviceless_compile.py), as a covering set.

What changes a compiled kernel: its kind, the tile shapes (q rows = the decode group padded
to >= 16, or ragged block_q x padded group; head_dim padded to a power of two; block_kv), q's
dtype, the pool's storage dtype and the spec's features; the GQA group and the block size
change only index arithmetic, k_splits only constants (and, with sinks, where they apply).

DEFAULT_CONFIGS: for every kind, supported head_dim, q dtype and GQA group 1..16, every tile
setting the engine's defaults can pick (`tiles.default_tile_choices`, over all batch shapes),
deduplicated by tile shape; along that list the storage dtypes, spec variants and block sizes
rotate so that each appears with each kind and q dtype. HEAVIEST_CONFIGS: the largest default
tiles with every spec feature on, per kind, head_dim class and q dtype, over fp8 and int8 pools
(the most registers). INTERPRET_CASES: the interpret-mode variant and quantized-pool tests'
own cases (test_attention_variants.py, test_quantized_attention.py), with their tunings (the
plain cases of test_attention.py are lowered by test_lowering.py).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp

import pallas_kernels as pk
from pallas_kernels import tiles

Spec = pk.AttentionSpec
DTYPES = ("bfloat16", "float16", "float32")
KV_CACHE_DTYPES = ("auto", "fp8", "int8", "fp8_e5m2")
GROUPS = (1, 2, 4, 8, 16)
EVERYTHING = Spec(0.1, sliding_window=64, logit_softcap=30.0, use_alibi=True, use_sinks=True)
SPECS = (None, Spec(0.1, sliding_window=64), Spec(0.1, logit_softcap=30.0), Spec(0.1, use_alibi=True),
         Spec(0.1, use_sinks=True), EVERYTHING)
# Shapes that exercise both decode paths: 8 sequences x 64 blocks of context (k_splits > 1 by
# default), 256 packed tokens for ragged.
NUM_SEQS, NUM_KV_HEADS, MAX_BLOCKS, NUM_TOKENS = 8, 2, 64, 256


def _config(kind, head_dim, group, dtype, kv_cache_dtype, spec, block_size, tuning):
    return pk.KernelConfig(kind, NUM_SEQS, group * NUM_KV_HEADS, NUM_KV_HEADS, head_dim, block_size,
                           MAX_BLOCKS, num_tokens=NUM_TOKENS, num_layers=2, layer=1, dtype=dtype,
                           kv_cache_dtype=kv_cache_dtype, spec=spec, tuning=tuning)


def _rows(kind, group, tuning) -> int:
    group_pad = 1 << (group - 1).bit_length()
    return max(16, group_pad) if kind == "decode" else tuning["block_q"] * group_pad


def default_configs() -> list[pk.KernelConfig]:
    """One config per distinct default tile shape: (kind, padded head_dim, q bytes, rows,
    block_kv), head dims 80 and 96 (padded to 128, masked lanes) once per kind and q bytes.
    Each shape's config is drawn in rotation from those (GQA group, q dtype: bf16 and f16
    share tiles, pool dtype) whose defaults pick it; spec and block size rotate too."""
    candidates: dict[tuple, list] = {}
    for kind, head_dim, dtype, group, kv_cache_dtype in itertools.product(
            ("decode", "ragged"), pk.SUPPORTED_HEAD_DIMS, DTYPES, GROUPS, KV_CACHE_DTYPES):
        kv_dtype = pk.storage_dtype(kv_cache_dtype, dtype)
        for tuning in tiles.default_tile_choices(kind, group, head_dim, q_dtype=dtype, kv_dtype=kv_dtype):
            pow2 = head_dim & (head_dim - 1) == 0
            key = (kind, head_dim if pow2 else "non-pow2", jnp.dtype(dtype).itemsize,
                   _rows(kind, group, tuning) if pow2 else None, tuning["block_kv"])
            candidates.setdefault(key, []).append((kind, head_dim, group, dtype, kv_cache_dtype, tuning))
    out = []
    for j, options in enumerate(candidates.values()):
        kind, head_dim, group, dtype, kv_cache_dtype, tuning = options[(7 * j) % len(options)]
        out.append(_config(kind, head_dim, group, dtype, kv_cache_dtype, SPECS[j % len(SPECS)],
                           pk.SUPPORTED_BLOCK_SIZES[j % len(pk.SUPPORTED_BLOCK_SIZES)], dict(tuning)))
    return out


def heaviest_configs() -> list[pk.KernelConfig]:
    out = []
    for kind, head_dim, dtype, kv_cache_dtype in itertools.product(
            ("decode", "ragged"), (128, 256), ("bfloat16", "float32"), ("fp8", "int8")):
        group = 16 if kind == "decode" else 4
        tuning = tiles.default_tile_choices(kind, group, head_dim, q_dtype=dtype,
                                            kv_dtype=pk.storage_dtype(kv_cache_dtype, dtype))[-1]
        out.append(_config(kind, head_dim, group, dtype, kv_cache_dtype, EVERYTHING, 16,
                           dict(tuning)))
    return out


def interpret_cases() -> list[pk.KernelConfig]:
    """The interpret tests' kernel calls (shapes shrunk to the lists above; tiles kept)."""
    from tests.kernels.test_attention_variants import VARIANTS
    from tests.kernels.test_quantized_attention import POOLS

    out = []
    for _, spec, block_size, hq, hkv, head_dim, dtype, k_splits in VARIANTS:
        name, group = jnp.dtype(dtype).name, hq // hkv
        decode = {} if k_splits is None else dict(k_splits=k_splits, block_kv=16)
        ragged = dict(block_q=max(4, 16 // (1 << (group - 1).bit_length())), block_kv=16)
        out.append(_config("decode", head_dim, group, name, "auto", spec, block_size, decode))
        out.append(_config("ragged", head_dim, group, name, "auto", spec, block_size, ragged))
    for param in POOLS:
        kv_cache_dtype, dtype, head_dim, block_size, hq, hkv = param.values
        name = jnp.dtype(dtype).name
        out.append(_config("decode", head_dim, hq // hkv, name, kv_cache_dtype, None, block_size, dict(k_splits=2)))
        out.append(_config("ragged", head_dim, hq // hkv, name, kv_cache_dtype, None, block_size, {}))
    return list(dict.fromkeys(out))
