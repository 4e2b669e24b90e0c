"""GraniteForCausalLM: Llama's layers with IBM's multipliers: embeddings * `embedding_multiplier`,
attention scale `attention_multiplier`, sub-layer outputs * `residual_multiplier`, logits /
`logits_scaling`."""

from __future__ import annotations

from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    return {**fields, "embedding_multiplier": float(hf.get("embedding_multiplier", 1.0)),
            "attn_scale": float(hf.get("attention_multiplier", fields["head_dim"] ** -0.5)),
            "residual_multiplier": float(hf.get("residual_multiplier", 1.0)),
            "logits_scaling": float(hf.get("logits_scaling", 1.0))}


ARCHITECTURES = (Architecture("GraniteForCausalLM", _fields, llama_weights,
                              "Llama's layers with embedding, attention, residual and logit multipliers"),)
