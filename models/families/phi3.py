"""Phi3ForCausalLM (Phi-3, Phi-3.5, Phi-4-mini): Llama's layers with fused qkv_proj (q | k | v) and
gate_up_proj (gate | up), rope scaling up to longrope, optional partial rotary and sliding window."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import LLAMA_NORMS, head_weights, layer_norm_weights, sliding_fields
from models.weights import Split, TensorMap, fused, linear

PRESETS = {
    # microsoft/Phi-3-mini-4k-instruct
    "phi-3-mini": dict(architectures=["Phi3ForCausalLM"], vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=4096, original_max_position_embeddings=4096, rms_norm_eps=1e-5,
                       sliding_window=2047, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
                       dtype="bfloat16"),
}


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, eps=("rms_norm_eps",), eps_default=1e-5)
    return {**fields, "rope": hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"]),
            "activation": hf_config.activation(hf.get("hidden_act", "silu")),
            **sliding_fields(hf, fields["num_layers"], gated_by_flag=False)}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = head_weights(cfg, "model.embed_tokens", "model.norm")
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        attn, mlp = f"{ours}.self_attn", f"{ours}.mlp"
        maps += layer_norm_weights(cfg, hf, ours, LLAMA_NORMS)
        maps += fused(f"{hf}.self_attn.qkv_proj", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), False, Split())
        maps += linear(f"{hf}.self_attn.o_proj", f"{attn}.o_proj", False)
        maps += fused(f"{hf}.mlp.gate_up_proj", (f"{mlp}.gate_proj", f"{mlp}.up_proj"), False, Split())
        maps += linear(f"{hf}.mlp.down_proj", f"{mlp}.down_proj", False)
    return maps


ARCHITECTURES = (Architecture("Phi3ForCausalLM", _fields, _weights,
                              "Llama's layers, fused qkv and gate_up, longrope, sliding window", presets=PRESETS),)
