"""MptForCausalLM: ALiBi with MPT's slopes (`alibi_bias_max`), LayerNorm without bias, no bias
anywhere, fused Wqkv (q | k | v), exact-GELU MLP (`expansion_ratio`), optional `clip_qkv` and
`softmax_scale` (attn_config), tied head."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.weights import Split, TensorMap, embedding, fused, linear, norm


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, hidden=("d_model", "hidden_size"), layers=("n_layers", "num_hidden_layers"),
                                   heads=("n_heads", "num_attention_heads"), intermediate=None,
                                   max_positions=("max_seq_len",), eps=("layer_norm_epsilon",), eps_default=1e-5,
                                   tie_default=True)
    attn = hf.get("attn_config") or {}
    if attn.get("qk_ln"):
        raise ValueError("MPT with attn_config.qk_ln is not supported (transformers' MPT has no q/k LayerNorm)")
    if not attn.get("alibi", True):
        raise ValueError("MPT without ALiBi is not supported (transformers' MPT always uses ALiBi)")
    return {**fields, "intermediate_size": int(hf.get("expansion_ratio", 4)) * fields["hidden_size"],
            "norm": "layer", "norm_bias": False, "mlp": "plain", "activation": "gelu", "position": "alibi",
            "alibi_variant": "mpt", "alibi_bias_max": float(attn.get("alibi_bias_max", 8)),
            "clip_qkv": attn.get("clip_qkv"), "attn_scale": attn.get("softmax_scale")}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    maps = embedding("transformer.wte", "embed_tokens") + norm("transformer.norm_f", "norm")
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", False)
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.blocks.{i}", f"layers.{i}"
        attn = f"{ours}.self_attn"
        maps += norm(f"{hf}.norm_1", f"{ours}.input_layernorm") + norm(f"{hf}.norm_2", f"{ours}.post_attention_layernorm")
        maps += fused(f"{hf}.attn.Wqkv", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), False, Split())
        maps += linear(f"{hf}.attn.out_proj", f"{attn}.o_proj", False)
        maps += linear(f"{hf}.ffn.up_proj", f"{ours}.mlp.up_proj", False)
        maps += linear(f"{hf}.ffn.down_proj", f"{ours}.mlp.down_proj", False)
    return maps


ARCHITECTURES = (Architecture("MptForCausalLM", _fields, _weights,
                              "ALiBi (MPT slopes), bias-free LayerNorm and linears, fused qkv, clip_qkv"),)
