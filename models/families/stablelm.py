"""StableLmForCausalLM: LayerNorm with bias, partial NeoX rotary (`partial_rotary_factor`), SwiGLU,
bias on q/k/v (`use_qkv_bias`), optional per-head LayerNorms with their own weights on q and k
(`qk_layernorm`), parallel block with one norm (`use_parallel_residual`) or sequential."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import (attention_weights, head_weights, layer_norm_weights, mlp_weights,
                                         qk_norm_weights)
from models.weights import TensorMap


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, eps=("layer_norm_eps",), eps_default=1e-5)
    parallel = bool(hf.get("use_parallel_residual", False))
    return {**fields, "rope": hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"]),
            "norm": "layer", "norm_bias": True, "activation": hf_config.activation(hf.get("hidden_act", "silu")),
            "qkv_bias": bool(hf.get("use_qkv_bias", False)), "residual": "parallel" if parallel else "sequential",
            "qk_norm": "per_head" if hf.get("qk_layernorm") else None, "qk_norm_bias": False}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = head_weights(cfg, "model.embed_tokens", "model.norm")
    norms = {"input_layernorm": "input_layernorm"}
    if cfg.residual == "sequential":
        norms["post_attention_layernorm"] = "post_attention_layernorm"
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        maps += layer_norm_weights(cfg, hf, ours, norms) + attention_weights(cfg, hf, ours)
        maps += qk_norm_weights(cfg, f"{hf}.self_attn", f"{ours}.self_attn", names=("q_layernorm", "k_layernorm"))
        maps += mlp_weights(cfg, f"{hf}.mlp", ours)
    return maps


ARCHITECTURES = (Architecture("StableLmForCausalLM", _fields, _weights,
                              "LayerNorm, partial RoPE, per-head q/k LayerNorms, parallel or sequential"),)
