"""The Gemma family on Llama's weight names:

  GemmaForCausalLM   (1 + w) RMSNorm scaled in float32, embeddings * sqrt(hidden) in the model
                     dtype, GeGLU (tanh GELU), head_dim from the config, tied head
  Gemma2ForCausalLM  + sandwich norms (each sub-layer's output normalised before the residual
                     add), attention logit soft-cap, final logit soft-cap, scale
                     query_pre_attn_scalar^-0.5, sliding windows on alternate layers (`layer_types`)
  Gemma3ForCausalLM  (text) Gemma 2's layers without soft-caps by default, plus (1 + w) RMSNorm on
                     q and k per head, and a RoPE of its own (rope_local_base_freq) on windowed layers
"""

from __future__ import annotations

import math

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import llama_weights
from models.weights import TensorMap

PRESETS = {
    # google/gemma-2-9b
    "gemma-2-9b": dict(architectures=["Gemma2ForCausalLM"], vocab_size=256000, hidden_size=3584,
                       intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                       query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, dtype="bfloat16"),
}


def _gemma_fields(hf) -> dict:
    fields = hf_config.base_fields(hf, tie_default=True)
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    return {**fields, "rope": hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"]),
            "norm_unit_offset": True, "norm_scale_in_float32": True,
            "activation": "gelu_tanh" if act == "gelu" else hf_config.activation(act),  # "gelu" meant tanh (HF)
            "embedding_multiplier": math.sqrt(fields["hidden_size"]),
            "qkv_bias": bool(hf.get("attention_bias", False)), "o_bias": bool(hf.get("attention_bias", False))}


def _alternating_windows(hf, num_layers: int, window: int | None, pattern: int):
    """`layer_types`, else HF's default: every `pattern`-th layer (1-based) full, the others windowed."""
    windows = hf_config.layer_windows(hf, num_layers, window)
    if windows is None and window is not None:
        windows = tuple(window if (i + 1) % pattern else None for i in range(num_layers))
    return windows


def _gemma2_fields(hf) -> dict:
    fields = _gemma_fields(hf)
    window = hf.get("sliding_window")
    return {**fields, "norm_placement": "sandwich", "attn_scale": float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
            "attn_logit_softcap": hf.get("attn_logit_softcapping"),
            "final_logit_softcap": hf.get("final_logit_softcapping"), "sliding_window": window,
            "layer_windows": _alternating_windows(hf, fields["num_layers"], window, 2)}


def _gemma3_fields(hf) -> dict:
    fields = _gemma2_fields(hf)
    head_dim, max_pos = fields["head_dim"], fields["max_position_embeddings"]
    nested = isinstance((hf.get("rope_parameters") or {}).get("sliding_attention"), dict)
    if nested:
        local_params = hf_config.rope_parameters(hf, "sliding_attention")
    else:  # legacy keys: rope_local_base_freq, default rope
        local_params = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    global_params = hf_config.rope_parameters(hf, "full_attention")
    global_params.setdefault("rope_theta", hf.get("rope_theta", 1000000.0))
    return {**fields, "qk_norm": "head", "layer_windows": _alternating_windows(hf, fields["num_layers"],
                                                                               fields["sliding_window"], 6),
            "rope": hf_config.rope_config(hf, head_dim, max_pos, params=global_params),
            "local_rope": hf_config.rope_config(hf, head_dim, max_pos, params=local_params)}


_SANDWICH_NORMS = {"input_layernorm": "input_layernorm", "attn_output_norm": "post_attention_layernorm",
                   "post_attention_layernorm": "pre_feedforward_layernorm",
                   "mlp_output_norm": "post_feedforward_layernorm"}


def _sandwich_weights(cfg: ModelConfig) -> list[TensorMap]:
    return llama_weights(cfg, norms=_SANDWICH_NORMS)


ARCHITECTURES = (
    Architecture("GemmaForCausalLM", _gemma_fields, llama_weights, "(1 + w) RMSNorm, GeGLU, sqrt(hidden) embedding scale"),
    Architecture("Gemma2ForCausalLM", _gemma2_fields, _sandwich_weights,
                 "Gemma + sandwich norms, logit soft-caps, alternating sliding windows", presets=PRESETS),
    Architecture("Gemma3ForCausalLM", _gemma3_fields, _sandwich_weights,
                 "Gemma 2 + q/k norms, local RoPE on windowed layers (text model)"),
)
