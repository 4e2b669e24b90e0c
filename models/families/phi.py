"""PhiForCausalLM (Phi-1, 1.5, 2): parallel block with one LayerNorm (x + attn(ln(x)) + mlp(ln(x))),
partial NeoX rotary (`partial_rotary_factor`), bias everywhere, GELU(tanh) MLP, optional
LayerNorm on q and k per head (`qk_layernorm`), untied LM head with a bias."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import attention_weights, qk_norm_weights
from models.weights import TensorMap, embedding, linear, norm


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, eps=("layer_norm_eps",), eps_default=1e-5)
    return {**fields, "rope": hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"]),
            "norm": "layer", "norm_bias": True, "mlp": "plain", "mlp_bias": True, "qkv_bias": True, "o_bias": True,
            "activation": hf_config.activation(hf.get("hidden_act", "gelu_new")), "residual": "parallel",
            "qk_norm": "head" if hf.get("qk_layernorm") else None, "lm_head_bias": True}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = embedding("model.embed_tokens", "embed_tokens") + norm("model.final_layernorm", "norm", bias=True)
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", cfg.lm_head_bias)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        maps += norm(f"{hf}.input_layernorm", f"{ours}.input_layernorm", bias=True)
        maps += attention_weights(cfg, hf, ours, names=("q_proj", "k_proj", "v_proj", "dense"))
        maps += qk_norm_weights(cfg, f"{hf}.self_attn", f"{ours}.self_attn", names=("q_layernorm", "k_layernorm"))
        maps += linear(f"{hf}.mlp.fc1", f"{ours}.mlp.up_proj", True) + linear(f"{hf}.mlp.fc2", f"{ours}.mlp.down_proj", True)
    return maps


ARCHITECTURES = (Architecture("PhiForCausalLM", _fields, _weights,
                              "parallel block, partial RoPE, LayerNorm, q/k LayerNorm, LM head bias"),)
