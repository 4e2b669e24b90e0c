"""Rotary position embeddings with HF's scaling types (default, linear, dynamic NTK, llama3, yarn,
longrope), full or partial (the first `rotary_dim` dims of each head), in NeoX's half-split pair
layout or GPT-J's interleaved one.

`rope_cos_sin(rope, head_dim, max_position_embeddings, positions)` returns float32 `cos`/`sin`
of shape `positions.shape + (rotary_dim // 2,)` (one angle per rotated pair, the attention
factor of yarn/longrope folded in); `apply_rope(x, cos, sin, rope)` rotates a `[..., H, D]` array.

NOTE (position-dependent types): HF recomputes dynamic-NTK frequencies, and picks longrope's
short or long factors, from the longest sequence in the current forward pass, so its result
depends on how a sequence was batched and chunked. We use a per-token rule, a pure function of
the position: dynamic uses `seq_len = max(position + 1, max_position_embeddings)`, longrope uses
the long factors iff `position + 1 > original_max_position_embeddings`. Both equal HF exactly
while a sequence stays within the original length, and in token-by-token decoding beyond it;
they differ from HF only for prompt tokens within one prefill that crosses that length (where HF
uses the prompt's full length for every token).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from models.config import RopeConfig


def base_inv_freq(theta: float, dim: int) -> np.ndarray:
    """float32[dim // 2]: 1 / theta^(2i/d), computed in float32 as HF does."""
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def _llama3_inv_freq(rope: RopeConfig, inv_freq: np.ndarray) -> np.ndarray:
    old_len = float(rope.original_max_position_embeddings)
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rope: RopeConfig, dim: int) -> tuple[np.ndarray, float]:
    base, factor = rope.theta, rope.factor
    original = rope.original_max_position_embeddings
    if rope.attention_factor is not None:
        attention_factor = rope.attention_factor
    elif rope.mscale and rope.mscale_all_dim:
        attention_factor = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
    else:
        attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # share of the extrapolated (unscaled) frequency
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return inv_freq.astype(np.float32), float(attention_factor)


def longrope_attention_factor(rope: RopeConfig) -> float:
    """The cos/sin scale of longrope: given, or sqrt(1 + ln(factor) / ln(original length)), where
    the config reader sets `factor` (when absent) to max_position_embeddings / original length."""
    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(rope.factor) / math.log(rope.original_max_position_embeddings))


def static_inv_freq(rope: RopeConfig, head_dim: int) -> tuple[np.ndarray, float]:
    """(float32[dim // 2] inverse frequencies, attention factor) of the position-independent types."""
    dim = rope.dim(head_dim)
    inv_freq = base_inv_freq(rope.theta, dim)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32), 1.0
    if rope.rope_type == "llama3":
        return _llama3_inv_freq(rope, inv_freq), 1.0
    if rope.rope_type == "yarn":
        return _yarn(rope, dim)
    return inv_freq, 1.0  # default, and dynamic below max_position_embeddings


def rope_cos_sin(rope: RopeConfig, head_dim: int, max_position_embeddings: int, positions):
    """float32 (cos, sin), each `positions.shape + (rotary_dim // 2,)`."""
    dim = rope.dim(head_dim)
    pos = positions.astype(jnp.float32)[..., None]  # [..., 1]
    scale = 1.0
    if rope.rope_type == "dynamic":
        # [..., 1] per-token NTK base: theta * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))
        seq_len = jnp.maximum(pos + 1.0, float(max_position_embeddings))
        base = rope.theta * (rope.factor * seq_len / max_position_embeddings - (rope.factor - 1)) ** (
            dim / (dim - 2))
        exponents = jnp.asarray(np.arange(0, dim, 2, dtype=np.float32) / dim)
        inv_freq = 1.0 / (base ** exponents)  # [..., dim // 2]
    elif rope.rope_type == "longrope":
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        powers = np.float32(rope.theta) ** exponents
        short = jnp.asarray(np.float32(1.0) / (np.asarray(rope.short_factor, np.float32) * powers))
        long = jnp.asarray(np.float32(1.0) / (np.asarray(rope.long_factor, np.float32) * powers))
        use_long = pos + 1.0 > rope.original_max_position_embeddings  # [..., 1]
        inv_freq = jnp.where(use_long, long, short)  # [..., dim // 2]
        scale = longrope_attention_factor(rope)
    else:
        freqs, scale = static_inv_freq(rope, head_dim)
        inv_freq = jnp.asarray(freqs)  # [dim // 2]
    angles = pos * inv_freq  # [..., dim // 2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos, sin


def apply_rope(x, cos, sin, rope: RopeConfig):
    """Rotates the first `rotary_dim` dims of `x` `[..., num_heads, head_dim]` by `cos`/`sin`
    `[..., rotary_dim // 2]`: NeoX pairs (i, i + d/2) or, if `rope.interleaved`, GPT-J pairs (2i, 2i+1)."""
    dim = rope.dim(x.shape[-1])
    xf = x.astype(jnp.float32)
    rot, rest = xf[..., :dim], xf[..., dim:]
    c, s = cos[..., None, :], sin[..., None, :]  # [..., 1, dim // 2]
    if rope.interleaved:
        even, odd = rot[..., 0::2], rot[..., 1::2]
        rotated = jnp.stack([even * c - odd * s, odd * c + even * s], axis=-1).reshape(rot.shape)
    else:
        first, second = rot[..., : dim // 2], rot[..., dim // 2:]
        rotated = jnp.concatenate([first * c - second * s, second * c + first * s], axis=-1)
    out = rotated if dim == x.shape[-1] else jnp.concatenate([rotated, rest], axis=-1)
    return out.astype(x.dtype)
