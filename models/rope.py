"""Rotary position embeddings with HF's scaling types: default, linear, dynamic (NTK) and llama3.

`rope_cos_sin(rope, head_dim, max_position_embeddings, positions)` returns float32
`cos`/`sin` of shape `positions.shape + (head_dim,)`, laid out as HF does
(`cat(freqs, freqs)`), for `apply_rope`.

NOTE (dynamic NTK): HF recomputes the frequencies from the longest sequence in the current
forward pass, so its result depends on how a sequence was batched and chunked. We use the
per-token rule `seq_len = max(position + 1, max_position_embeddings)`, a pure function of the
position: it equals HF exactly while a sequence stays within `max_position_embeddings`, and in
token-by-token decoding beyond it; it differs from HF only for prompt tokens past
`max_position_embeddings` within one prefill (where HF uses the prompt's full length).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from models.config import RopeConfig


def base_inv_freq(theta: float, head_dim: int) -> np.ndarray:
    """float32[head_dim // 2]: 1 / theta^(2i/d), computed in float32 as HF does."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def static_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """float32[head_dim // 2] for the position-independent types (default, linear, llama3)."""
    inv_freq = base_inv_freq(rope.theta, head_dim)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.rope_type == "llama3":
        old_len = float(rope.original_max_position_embeddings)
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq  # default, and dynamic below max_position_embeddings


def rope_cos_sin(rope: RopeConfig, head_dim: int, max_position_embeddings: int, positions):
    """float32 (cos, sin), each `positions.shape + (head_dim,)`."""
    pos = positions.astype(jnp.float32)[..., None]  # [..., 1]
    if rope.rope_type == "dynamic":
        # [...] per-token NTK base: theta * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))
        seq_len = jnp.maximum(pos + 1.0, float(max_position_embeddings))
        base = rope.theta * (rope.factor * seq_len / max_position_embeddings - (rope.factor - 1)) ** (
            head_dim / (head_dim - 2))
        exponents = jnp.asarray(np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
        inv_freq = 1.0 / (base ** exponents)  # [..., head_dim // 2]
    else:
        inv_freq = jnp.asarray(static_inv_freq(rope, head_dim))  # [head_dim // 2]
    freqs = pos * inv_freq  # [..., head_dim // 2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [..., head_dim]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """Rotates `x` `[..., num_heads, head_dim]` by `cos`/`sin` `[..., head_dim]` (HF's rotate_half)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[..., None, :] + rotated * sin[..., None, :]
    return out.astype(x.dtype)
