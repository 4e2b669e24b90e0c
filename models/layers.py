"""The one set of Flax NNX layers every Llama-family architecture is built from.

Parameter names follow the HF checkpoints (`embed_tokens`, `layers.N.self_attn.q_proj`, ...),
so the loader's name map is mechanical. Layers are shape-agnostic in their leading axes:
the engine runs packed tokens `[num_tokens, hidden]`, static batches run `[batch, seq, hidden]`.
How K/V are stored and attended is the cache's business (models/attention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig
from models.rope import apply_rope, rope_cos_sin
from pallas_kernels.attention_spec import AttentionSpec

_INIT = nnx.initializers.normal(stddev=0.02)


class RMSNorm(nnx.Module):
    """HF Llama RMSNorm: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * xf.astype(x.dtype)


def _linear(fan_in, fan_out, bias, cfg_dtype, rngs):
    return nnx.Linear(fan_in, fan_out, use_bias=bias, dtype=cfg_dtype, param_dtype=cfg_dtype,
                      kernel_init=_INIT, rngs=rngs)


class Attention(nnx.Module):
    """GQA self-attention with optional q/k/v bias, o bias and q/k RMSNorm."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        h, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = _linear(h, cfg.num_heads * hd, cfg.qkv_bias, dtype, rngs)
        self.k_proj = _linear(h, cfg.num_kv_heads * hd, cfg.qkv_bias, dtype, rngs)
        self.v_proj = _linear(h, cfg.num_kv_heads * hd, cfg.qkv_bias, dtype, rngs)
        self.o_proj = _linear(cfg.num_heads * hd, h, cfg.o_bias, dtype, rngs)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=dtype)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, param_dtype=dtype)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, cos, sin, positions, cache, layer: int):
        lead = x.shape[:-1]
        q = self.q_proj(x).reshape(*lead, self.num_heads, self.head_dim)  # [..., Hq, D]
        k = self.k_proj(x).reshape(*lead, self.num_kv_heads, self.head_dim)  # [..., Hkv, D]
        v = self.v_proj(x).reshape(*lead, self.num_kv_heads, self.head_dim)  # [..., Hkv, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out, cache = cache.attend(layer, q, k, v, positions, AttentionSpec(sm_scale=self.head_dim ** -0.5))
        return self.o_proj(out.reshape(*lead, self.num_heads * self.head_dim)), cache


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _linear(h, i, cfg.mlp_bias, dtype, rngs)
        self.up_proj = _linear(h, i, cfg.mlp_bias, dtype, rngs)
        self.down_proj = _linear(i, h, cfg.mlp_bias, dtype, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, positions, cache, layer: int):
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, positions, cache, layer)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class CausalLM(nnx.Module):
    """A Llama-family decoder-only language model (the architecture flags live in the config)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=dtype,
                                      embedding_init=_INIT, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=dtype)
        self.lm_head = None if cfg.tie_word_embeddings else _linear(cfg.hidden_size, cfg.vocab_size, False,
                                                                    dtype, rngs)

    def __call__(self, token_ids, positions, cache):
        """token_ids/positions `i32[...]` -> (final hidden states `[..., hidden]`, updated cache)."""
        cfg = self.config
        cos, sin = rope_cos_sin(cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions)
        x = self.embed_tokens(token_ids)
        for i, layer in enumerate(self.layers):
            x, cache = layer(x, cos, sin, positions, cache, i)
        return self.norm(x), cache

    def compute_logits(self, hidden):
        """hidden `[..., hidden]` -> float32 logits `[..., vocab]`."""
        if self.lm_head is None:
            table = self.embed_tokens.embedding[...]  # [vocab, hidden]
            return jnp.einsum("...h,vh->...v", hidden, table, preferred_element_type=jnp.float32)
        kernel = self.lm_head.kernel[...]  # [hidden, vocab]
        return jnp.einsum("...h,hv->...v", hidden, kernel, preferred_element_type=jnp.float32)
