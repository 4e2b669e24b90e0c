"""InternLM2ForCausalLM (remote code): Llama's layers under other names, with q/k/v fused into
`attention.wqkv` grouped per KV head ([Hkv, q_per_kv + 2, D] rows) and `bias` on wqkv / wo.
Tested through a conversion of a Llama checkpoint (tests/checkpoints.py)."""

from __future__ import annotations

from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import head_weights, layer_norm_weights, llama_fields
from models.weights import GroupedQKV, TensorMap, fused, linear


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    bias = bool(hf.get("bias", False))
    return {**fields, "qkv_bias": bias, "o_bias": bias}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = head_weights(cfg, "model.tok_embeddings", "model.norm", hf_head="output")
    qkv = GroupedQKV(cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        attn, mlp = f"{ours}.self_attn", f"{ours}.mlp"
        maps += layer_norm_weights(cfg, hf, ours, {"input_layernorm": "attention_norm",
                                                   "post_attention_layernorm": "ffn_norm"})
        maps += fused(f"{hf}.attention.wqkv", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), cfg.qkv_bias, qkv)
        maps += linear(f"{hf}.attention.wo", f"{attn}.o_proj", cfg.o_bias)
        for hf_name, ours_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            maps += linear(f"{hf}.feed_forward.{hf_name}", f"{mlp}.{ours_name}", False)
    return maps


ARCHITECTURES = (Architecture("InternLM2ForCausalLM", _fields, _weights, "Llama's layers, grouped fused wqkv",
                              reference="LlamaForCausalLM"),)
