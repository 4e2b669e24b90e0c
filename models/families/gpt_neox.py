"""GPTNeoXForCausalLM (Pythia, GPT-NeoX-20B): partial NeoX rotary (`rotary_pct`, 0.25 by default),
fused query_key_value in per-head [H, 3, D] layout, LayerNorm with bias, GELU MLP with bias,
parallel residual with two norms (`use_parallel_residual`) or sequential, untied `embed_out`."""

from __future__ import annotations

from models import hf_config
from models.architecture import DEFAULT_IGNORED, Architecture
from models.config import ModelConfig
from models.weights import GroupedQKV, TensorMap, embedding, fused, linear, norm


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, eps=("layer_norm_eps",), eps_default=1e-5)
    params = hf_config.rope_parameters(hf)
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
    params.setdefault("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0)))
    rope = hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"], params=params,
                                 rotary_dim=int(fields["head_dim"] * float(factor)))
    bias = bool(hf.get("attention_bias", True))
    parallel = bool(hf.get("use_parallel_residual", True))
    return {**fields, "rope": rope, "norm": "layer", "norm_bias": True, "mlp": "plain", "mlp_bias": True,
            "activation": hf_config.activation(hf.get("hidden_act", "gelu")), "qkv_bias": bias, "o_bias": bias,
            "residual": "parallel" if parallel else "sequential", "parallel_norms": 2}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = embedding("gpt_neox.embed_in", "embed_tokens") + norm("gpt_neox.final_layer_norm", "norm", bias=True)
    if not cfg.tie_word_embeddings:
        maps += linear("embed_out", "lm_head", False)
    qkv = GroupedQKV(cfg.num_heads, 1, cfg.head_dim)  # per head: q, k, v
    for i in range(cfg.num_layers):
        hf, ours = f"gpt_neox.layers.{i}", f"layers.{i}"
        attn = f"{ours}.self_attn"
        maps += norm(f"{hf}.input_layernorm", f"{ours}.input_layernorm", bias=True)
        maps += norm(f"{hf}.post_attention_layernorm", f"{ours}.post_attention_layernorm", bias=True)
        maps += fused(f"{hf}.attention.query_key_value", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"),
                      cfg.qkv_bias, qkv)
        maps += linear(f"{hf}.attention.dense", f"{attn}.o_proj", cfg.o_bias)
        maps += linear(f"{hf}.mlp.dense_h_to_4h", f"{ours}.mlp.up_proj", True)
        maps += linear(f"{hf}.mlp.dense_4h_to_h", f"{ours}.mlp.down_proj", True)
    return maps


ARCHITECTURES = (Architecture(
    "GPTNeoXForCausalLM", _fields, _weights, "partial RoPE, per-head fused qkv, parallel or sequential block",
    ignored=DEFAULT_IGNORED + (r".*\.attention\.(bias|masked_bias)",)),)
