"""MistralForCausalLM: Llama's layers plus an optional sliding attention window on every layer."""

from __future__ import annotations

from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights, sliding_fields


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    return {**fields, **sliding_fields(hf, fields["num_layers"], gated_by_flag=False)}


ARCHITECTURES = (Architecture("MistralForCausalLM", _fields, llama_weights,
                              "Llama's layers, sliding window on every layer"),)
