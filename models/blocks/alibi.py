"""ALiBi slopes: one per query head, added as `slope * (key_pos - query_pos)` to the logits.

Three variants of HF transformers:
  bloom   BLOOM, Baichuan-13B: geometric slopes 2^(-8i/n) over the largest power of two n <= H,
          the remaining heads taking every other slope of 2n.
  falcon  Falcon-RW: BLOOM's slopes rounded to bfloat16 (as HF builds them) and, since Falcon
          scales (q.k + alibi) by 1/sqrt(head_dim), multiplied by the softmax scale.
  mpt     MPT: 2^(-i * alibi_bias_max / n) over the next power of two n >= H, odd-indexed slopes
          first when H is not a power of two.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np


def _bloom_slopes(num_heads: int) -> np.ndarray:
    closest = 2 ** math.floor(math.log2(num_heads))
    base = np.float32(2 ** (-(2 ** -(math.log2(closest) - 3))))
    slopes = base ** np.arange(1, closest + 1, dtype=np.float32)
    if closest != num_heads:
        extra_base = np.float32(2 ** (-(2 ** -(math.log2(2 * closest) - 3))))
        remaining = min(closest, num_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 1 + 2 * remaining, 2, dtype=np.float32)])
    return slopes.astype(np.float32)


def _mpt_slopes(num_heads: int, bias_max: float) -> np.ndarray:
    padded = 2 ** math.ceil(math.log2(num_heads))
    base = np.arange(1, padded + 1, dtype=np.float32) * np.float32(bias_max / padded)
    slopes = (np.float32(1.0) / np.power(np.float32(2.0), base)).astype(np.float32)
    if padded != num_heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes


def alibi_slopes(num_heads: int, variant: str, *, bias_max: float = 8.0, sm_scale: float = 1.0) -> np.ndarray:
    """float32[num_heads] slopes of `variant` ("bloom" | "falcon" | "mpt")."""
    if variant == "mpt":
        return _mpt_slopes(num_heads, bias_max)
    slopes = _bloom_slopes(num_heads)
    if variant == "falcon":
        rounded = slopes.astype(ml_dtypes.bfloat16).astype(np.float32)
        return (rounded * np.float32(sm_scale)).astype(np.float32)
    if variant != "bloom":
        raise ValueError(f"unknown ALiBi variant {variant!r}")
    return slopes
