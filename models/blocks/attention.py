"""Self-attention: q/k/v projections, optional clipping and q/k norms, RoPE, then the KV cache's
`attend` with this layer's static `AttentionSpec` (window, soft-cap, ALiBi, sinks, scale), then
o_proj. Learned sinks (GPT-OSS, `cfg.attention_sinks`): one logit per query head, `sinks [Hq]`.

q/k norm placements (`cfg.qk_norm`):
  head       one norm over head_dim shared by all heads, after the head split (Qwen3, Gemma 3, Phi)
  all_heads  one norm over all heads' dims, before the split (OLMo 2)
  per_head   a norm per head with its own weights (StableLM)
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from models.blocks.alibi import alibi_slopes
from models.blocks.common import linear
from models.blocks.norms import Norm, NormSpec, PerHeadNorm
from models.blocks.rope import apply_rope
from models.config import ModelConfig


def _qk_norms(cfg: ModelConfig, dtype):
    spec = NormSpec.of(cfg, bias=cfg.qk_norm_bias)
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if cfg.qk_norm == "head":
        return Norm(d, spec, param_dtype=dtype), Norm(d, spec, param_dtype=dtype)
    if cfg.qk_norm == "all_heads":
        return Norm(hq * d, spec, param_dtype=dtype), Norm(hkv * d, spec, param_dtype=dtype)
    if cfg.qk_norm == "per_head":
        return PerHeadNorm(hq, d, spec, param_dtype=dtype), PerHeadNorm(hkv, d, spec, param_dtype=dtype)
    return None, None


class SelfAttention(nnx.Module):
    """GQA self-attention of layer `layer` of `cfg`."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        h, hd = cfg.hidden_size, cfg.head_dim
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = linear(h, cfg.num_heads * hd, cfg.qkv_bias, dtype, rngs)
        self.k_proj = linear(h, cfg.num_kv_heads * hd, cfg.qkv_bias, dtype, rngs)
        self.v_proj = linear(h, cfg.num_kv_heads * hd, cfg.qkv_bias, dtype, rngs)
        self.o_proj = linear(cfg.num_heads * hd, h, cfg.o_bias, dtype, rngs)
        self.qk_norm = cfg.qk_norm
        self.q_norm, self.k_norm = _qk_norms(cfg, dtype)
        self.clip_qkv = cfg.clip_qkv
        self.spec = cfg.attention_spec(layer)
        self.sinks = nnx.Param(jnp.zeros((cfg.num_heads,), dtype)) if cfg.attention_sinks else None
        self.rope = cfg.layer_rope(layer) if cfg.position == "rope" else None
        self.alibi = (tuple(float(s) for s in alibi_slopes(cfg.num_heads, cfg.alibi_variant, bias_max=cfg.alibi_bias_max,
                                                           sm_scale=self.spec.sm_scale))
                      if cfg.position == "alibi" else None)

    def __call__(self, x, rope_tables, positions, cache):
        """x `[..., hidden]` -> (`[..., hidden]`, cache); `rope_tables[rope]` = (cos, sin)."""
        lead = x.shape[:-1]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [..., Hq*D], [..., Hkv*D] x2
        if self.clip_qkv is not None:
            q, k, v = (jnp.clip(t, -self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        if self.qk_norm == "all_heads":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(*lead, self.num_heads, self.head_dim)  # [..., Hq, D]
        k = k.reshape(*lead, self.num_kv_heads, self.head_dim)  # [..., Hkv, D]
        v = v.reshape(*lead, self.num_kv_heads, self.head_dim)  # [..., Hkv, D]
        if self.qk_norm in ("head", "per_head"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            cos, sin = rope_tables[self.rope]
            q, k = apply_rope(q, cos, sin, self.rope), apply_rope(k, cos, sin, self.rope)
        slopes = None if self.alibi is None else jnp.asarray(self.alibi, jnp.float32)  # f32[Hq]
        sinks = None if self.sinks is None else self.sinks[...].astype(jnp.float32)  # f32[Hq]
        out, cache = cache.attend(self.layer, q, k, v, positions, self.spec, alibi_slopes=slopes, sinks=sinks)
        return self.o_proj(out.reshape(*lead, self.num_heads * self.head_dim)), cache
