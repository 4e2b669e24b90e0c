"""BloomForCausalLM: ALiBi (no position embeddings), a LayerNorm right after the word embeddings,
per-head fused query_key_value [H, 3, D], LayerNorm with bias, GELU(tanh) MLP with bias, tied head."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture, prefix_adder
from models.config import ModelConfig
from models.weights import GroupedQKV, TensorMap, embedding, fused, linear, norm


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, hidden=("hidden_size", "n_embed"), layers=("n_layer", "num_hidden_layers"),
                                   heads=("n_head", "num_attention_heads"), intermediate=None,
                                   eps=("layer_norm_epsilon",), eps_default=1e-5, tie_default=True)
    return {**fields, "intermediate_size": 4 * fields["hidden_size"], "norm": "layer", "norm_bias": True,
            "mlp": "plain", "activation": "gelu_tanh", "mlp_bias": True, "qkv_bias": True, "o_bias": True,
            "position": "alibi", "alibi_variant": "bloom", "embed_norm": True}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    t = "transformer"
    maps = embedding(f"{t}.word_embeddings", "embed_tokens") + norm(f"{t}.word_embeddings_layernorm", "embed_norm",
                                                                    bias=True)
    maps += norm(f"{t}.ln_f", "norm", bias=True)
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", False)
    qkv = GroupedQKV(cfg.num_heads, 1, cfg.head_dim)
    for i in range(cfg.num_layers):
        hf, ours = f"{t}.h.{i}", f"layers.{i}"
        attn = f"{ours}.self_attn"
        maps += norm(f"{hf}.input_layernorm", f"{ours}.input_layernorm", bias=True)
        maps += norm(f"{hf}.post_attention_layernorm", f"{ours}.post_attention_layernorm", bias=True)
        maps += fused(f"{hf}.self_attention.query_key_value", (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"),
                      True, qkv)
        maps += linear(f"{hf}.self_attention.dense", f"{attn}.o_proj", True)
        maps += linear(f"{hf}.mlp.dense_h_to_4h", f"{ours}.mlp.up_proj", True)
        maps += linear(f"{hf}.mlp.dense_4h_to_h", f"{ours}.mlp.down_proj", True)
    return maps


ARCHITECTURES = (Architecture("BloomForCausalLM", _fields, _weights,
                              "ALiBi, embedding LayerNorm, per-head fused qkv, tied head",
                              checkpoint_name=prefix_adder("transformer.", keep=("lm_head",))),)
