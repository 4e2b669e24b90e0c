"""Starcoder2ForCausalLM: LayerNorm with bias (`norm_epsilon`), plain GELU(tanh) MLP c_fc / c_proj,
bias on every Linear (`use_bias`), RoPE, optional sliding window, tied head."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import LLAMA_NORMS, attention_weights, head_weights, layer_norm_weights, sliding_fields
from models.weights import TensorMap, linear


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, eps=("norm_epsilon",), eps_default=1e-5, tie_default=True)
    bias = bool(hf.get("use_bias", True))
    return {**fields, "rope": hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"]),
            "norm": "layer", "norm_bias": True, "mlp": "plain", "mlp_bias": bias, "qkv_bias": bias, "o_bias": bias,
            "activation": hf_config.activation(hf.get("hidden_act", "gelu_pytorch_tanh")),
            **sliding_fields(hf, fields["num_layers"], gated_by_flag=False)}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = head_weights(cfg, "model.embed_tokens", "model.norm")
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        maps += layer_norm_weights(cfg, hf, ours, LLAMA_NORMS) + attention_weights(cfg, hf, ours)
        maps += linear(f"{hf}.mlp.c_fc", f"{ours}.mlp.up_proj", cfg.mlp_bias)
        maps += linear(f"{hf}.mlp.c_proj", f"{ours}.mlp.down_proj", cfg.mlp_bias)
    return maps


ARCHITECTURES = (Architecture("Starcoder2ForCausalLM", _fields, _weights,
                              "LayerNorm, GELU MLP, bias everywhere, RoPE, sliding window"),)
