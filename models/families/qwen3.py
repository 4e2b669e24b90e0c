"""Qwen3ForCausalLM: RMSNorm over head_dim on q and k before RoPE; `attention_bias` on q, k, v, o."""

from __future__ import annotations

from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights, sliding_fields


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    return {**fields, "qk_norm": "head", **sliding_fields(hf, fields["num_layers"], gated_by_flag=True)}


ARCHITECTURES = (Architecture("Qwen3ForCausalLM", _fields, llama_weights, "Llama's layers, q/k RMSNorm per head"),)
