"""OLMo on Llama's weight names:

  OlmoForCausalLM   non-parametric LayerNorm (no weight, no bias, eps 1e-5), optional `clip_qkv`
  Olmo2ForCausalLM  RMSNorm scaled in float32, norms on each sub-layer's output only (no pre-norms),
                    RMSNorm over all heads of q and of k before the head split
"""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import llama_fields, llama_weights
from models.weights import TensorMap


def _olmo_fields(hf) -> dict:
    fields = llama_fields(hf)
    return {**fields, "norm": "layer", "norm_scale": False, "norm_bias": False, "norm_eps": 1e-5,
            "clip_qkv": hf.get("clip_qkv")}


def _olmo2_fields(hf) -> dict:
    fields = llama_fields(hf)
    return {**fields, "norm_scale_in_float32": True, "norm_placement": "output", "qk_norm": "all_heads"}


_OUTPUT_NORMS = {"attn_output_norm": "post_attention_layernorm", "mlp_output_norm": "post_feedforward_layernorm"}


def _olmo2_weights(cfg: ModelConfig) -> list[TensorMap]:
    return llama_weights(cfg, norms=_OUTPUT_NORMS)


ARCHITECTURES = (
    Architecture("OlmoForCausalLM", _olmo_fields, llama_weights, "non-parametric LayerNorm, clip_qkv"),
    Architecture("Olmo2ForCausalLM", _olmo2_fields, _olmo2_weights, "output norms only, q/k RMSNorm over all heads"),
)
