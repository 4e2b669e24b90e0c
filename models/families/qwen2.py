"""Qwen2ForCausalLM: bias on the q/k/v projections (not on o); sliding windows on the layers
from `max_window_layers` on when `use_sliding_window` is set."""

from __future__ import annotations

from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights, sliding_fields

PRESETS = {
    "qwen2.5-7b": dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                       tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643, dtype="bfloat16"),
}


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    return {**fields, "qkv_bias": True, "o_bias": False,
            **sliding_fields(hf, fields["num_layers"], gated_by_flag=True)}


ARCHITECTURES = (Architecture("Qwen2ForCausalLM", _fields, llama_weights, "Llama's layers, q/k/v bias",
                              presets=PRESETS),)
