"""Norms: RMSNorm (Llama's, Gemma's (1 + w), OLMo 2's float32 scaling) and LayerNorm (with or
without bias, or without any affine parameters as in OLMo). All normalise in float32."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """What one norm computes (static)."""

    kind: str  # "rms" | "layer"
    eps: float
    scale: bool = True  # a learned weight
    bias: bool = False  # a learned bias (LayerNorm)
    unit_offset: bool = False  # scale by (1 + w) (Gemma)
    scale_in_float32: bool = False  # RMSNorm: (x * w) in float32, then cast; else cast, then * w (Llama)

    @classmethod
    def of(cls, cfg: ModelConfig, *, bias: bool | None = None) -> "NormSpec":
        """The model's norm (`bias` overrides the config's, for q/k norms)."""
        return cls(kind=cfg.norm, eps=cfg.norm_eps, scale=cfg.norm_scale,
                   bias=cfg.norm_bias if bias is None else bias, unit_offset=cfg.norm_unit_offset,
                   scale_in_float32=cfg.norm_scale_in_float32)


class Norm(nnx.Module):
    """RMSNorm or LayerNorm over the last axis, as `spec` says."""

    def __init__(self, dim: int, spec: NormSpec, *, param_dtype):
        self.spec = spec
        self.weight = nnx.Param(jnp.full((dim,), 0.0 if spec.unit_offset else 1.0, param_dtype)) if spec.scale else None
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype)) if spec.bias else None

    def __call__(self, x):
        spec = self.spec
        xf = x.astype(jnp.float32)
        if spec.kind == "layer":
            mean = jnp.mean(xf, axis=-1, keepdims=True)
            centred = xf - mean
            xf = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + spec.eps)
        else:
            xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + spec.eps)
        if self.weight is None:
            out = xf
        elif spec.kind == "layer" or spec.unit_offset or spec.scale_in_float32:
            w = self.weight[...].astype(jnp.float32)
            out = xf * (1.0 + w if spec.unit_offset else w)
        else:  # Llama: cast first, then scale in the model dtype
            return self.weight[...] * xf.astype(x.dtype)
        if self.bias is not None:
            out = out + self.bias[...].astype(jnp.float32)
        return out.astype(x.dtype)


class PerHeadNorm(nnx.Module):
    """One norm per head over `[..., num_heads, head_dim]`, each with its own weights (StableLM)."""

    def __init__(self, num_heads: int, head_dim: int, spec: NormSpec, *, param_dtype):
        self.norms = nnx.List([Norm(head_dim, spec, param_dtype=param_dtype) for _ in range(num_heads)])

    def __call__(self, x):
        return jnp.stack([norm(x[..., h, :]) for h, norm in enumerate(self.norms)], axis=-2)
