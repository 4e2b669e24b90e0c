"""LlamaForCausalLM (Llama 2, 3, 3.1, 3.2) and the names vLLM serves with Llama's code:
AquilaForCausalLM, YiForCausalLM (also its early `ln1`/`ln2` norm names) and InternLMForCausalLM
(whose `bias` puts a bias on q, k, v and o). GQA, explicit head_dim, tied or untied embeddings,
rope scaling default / linear / dynamic / llama3 / yarn / longrope."""

from __future__ import annotations

import re

from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_theta": 500000.0}

PRESETS = {
    "llama-3.2-1b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={**_LLAMA3_ROPE, "factor": 32.0}, tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=128001, dtype="bfloat16"),
    "llama-3.1-8b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={**_LLAMA3_ROPE, "factor": 8.0}, tie_word_embeddings=False,
                         bos_token_id=128000, eos_token_id=128001, dtype="bfloat16"),
}


def _internlm_fields(hf) -> dict:
    fields = llama_fields(hf)
    bias = bool(hf.get("bias", True)) or bool(hf.get("attention_bias", False))
    return {**fields, "qkv_bias": bias, "o_bias": bias}


_YI_NORMS = re.compile(r"(.*\.layers\.\d+\.)ln([12])(\..*)")


def _yi_name(name: str) -> str:
    m = _YI_NORMS.fullmatch(name)
    if not m:
        return name
    return m.group(1) + ("input_layernorm" if m.group(2) == "1" else "post_attention_layernorm") + m.group(3)


LLAMA = Architecture("LlamaForCausalLM", llama_fields, llama_weights,
                     "RMSNorm, SwiGLU, RoPE (all scaling types), GQA", presets=PRESETS)
ARCHITECTURES = (
    LLAMA,
    Architecture("AquilaForCausalLM", llama_fields, llama_weights, "Llama's layers and names",
                 reference="LlamaForCausalLM"),
    Architecture("YiForCausalLM", llama_fields, llama_weights, "Llama's layers; early ln1/ln2 norm names too",
                 reference="LlamaForCausalLM", checkpoint_name=_yi_name),
    Architecture("InternLMForCausalLM", _internlm_fields, llama_weights, "Llama's layers, bias on q/k/v/o",
                 reference="LlamaForCausalLM"),
)
