"""GPT2LMHeadModel: learned absolute positions, LayerNorm with bias, plain GELU(tanh) MLP, fused
c_attn (q|k|v) in Conv1D layout (weights already [in, out]), tied LM head. Hub checkpoints
saved without the `transformer.` prefix (the original `gpt2`) load too; the causal-mask
buffers `attn.bias` / `attn.masked_bias` some of them carry are skipped."""

from __future__ import annotations

from models import hf_config
from models.architecture import DEFAULT_IGNORED, Architecture, prefix_adder
from models.config import ModelConfig
from models.weights import Split, TensorMap, conv1d, embedding, fused, linear, norm


def gpt2_style_fields(hf) -> dict:
    """The config keys GPT-2 and GPTBigCode share (n_embd, n_layer, n_head, n_inner, n_positions)."""
    fields = hf_config.base_fields(hf, hidden=("n_embd", "hidden_size"), layers=("n_layer", "num_hidden_layers"),
                                   heads=("n_head", "num_attention_heads"), intermediate=("n_inner",),
                                   max_positions=("n_positions", "max_position_embeddings"),
                                   eps=("layer_norm_epsilon",), eps_default=1e-5, tie_default=True)
    return {**fields, "norm": "layer", "norm_bias": True, "mlp": "plain", "mlp_bias": True, "qkv_bias": True,
            "o_bias": True, "position": "learned",
            "activation": hf_config.activation(hf.get("activation_function", "gelu_new")),
            "attn_scale": None if hf.get("scale_attn_weights", True) else 1.0}


def gpt2_style_weights(cfg: ModelConfig, qkv_transform, *, conv: bool) -> list[TensorMap]:
    """transformer.{wte, wpe, h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_f}."""
    proj = conv1d if conv else (lambda hf, ours: linear(hf, ours, True))
    maps = embedding("transformer.wte", "embed_tokens") + embedding("transformer.wpe", "embed_positions")
    maps += norm("transformer.ln_f", "norm", bias=True)
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", False)
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}", f"layers.{i}"
        attn = f"{ours}.self_attn"
        maps += norm(f"{hf}.ln_1", f"{ours}.input_layernorm", bias=True)
        maps += norm(f"{hf}.ln_2", f"{ours}.post_attention_layernorm", bias=True)
        maps += fused(f"{hf}.attn.c_attn", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"), True, qkv_transform)
        maps += proj(f"{hf}.attn.c_proj", f"{attn}.o_proj")
        maps += proj(f"{hf}.mlp.c_fc", f"{ours}.mlp.up_proj")
        maps += proj(f"{hf}.mlp.c_proj", f"{ours}.mlp.down_proj")
    return maps


def _fields(hf) -> dict:
    return {**gpt2_style_fields(hf), "attn_scale_by_layer": bool(hf.get("scale_attn_by_inverse_layer_idx", False))}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    return gpt2_style_weights(cfg, Split(conv1d=True), conv=True)


ARCHITECTURES = (Architecture(
    "GPT2LMHeadModel", _fields, _weights, "LayerNorm, GELU MLP, learned positions, fused Conv1D qkv, tied head",
    checkpoint_name=prefix_adder("transformer.", keep=("lm_head",)),
    ignored=DEFAULT_IGNORED + (r".*\.attn\.(bias|masked_bias)",)),)
