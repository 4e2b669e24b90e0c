"""OPTForCausalLM: learned positions offset by 2, LayerNorm with bias, ReLU MLP with bias, tied
head. `do_layer_norm_before=False` (OPT-350m) puts the norms after each residual add and drops
the final norm; `word_embed_proj_dim != hidden_size` adds project_in / project_out."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture, prefix_adder
from models.config import ModelConfig
from models.families._llama_like import attention_weights
from models.weights import TensorMap, embedding, linear, norm

PRESETS = {
    # facebook/opt-13b (the vLLM paper's model)
    "opt-13b": dict(architectures=["OPTForCausalLM"], vocab_size=50272, hidden_size=5120, ffn_dim=20480,
                    num_hidden_layers=40, num_attention_heads=40, max_position_embeddings=2048,
                    do_layer_norm_before=True, word_embed_proj_dim=5120, activation_function="relu",
                    enable_bias=True, tie_word_embeddings=True, bos_token_id=2, eos_token_id=2, dtype="float16"),
}


def _fields(hf) -> dict:
    fields = hf_config.base_fields(hf, intermediate=("ffn_dim",), eps=("layer_norm_eps",), eps_default=1e-5,
                                   tie_default=True)
    pre_norm = bool(hf.get("do_layer_norm_before", True))
    affine = bool(hf.get("layer_norm_elementwise_affine", True))
    bias = bool(hf.get("enable_bias", True))
    embed_dim = int(hf.get("word_embed_proj_dim") or fields["hidden_size"])
    return {**fields, "norm": "layer", "norm_bias": affine, "norm_scale": affine, "mlp": "plain",
            "activation": hf_config.activation(hf.get("activation_function", "relu")), "mlp_bias": bias,
            "qkv_bias": bias, "o_bias": bias, "position": "learned", "position_offset": 2,
            "norm_placement": "pre" if pre_norm else "post",
            "final_norm": pre_norm and not hf.get("_remove_final_layer_norm", False),
            "embed_dim": embed_dim if embed_dim != fields["hidden_size"] else None}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    d = "model.decoder"
    layer_norm = dict(scale=cfg.norm_scale, bias=cfg.norm_bias)
    maps = embedding(f"{d}.embed_tokens", "embed_tokens") + embedding(f"{d}.embed_positions", "embed_positions")
    if cfg.embed_dim:
        maps += linear(f"{d}.project_in", "project_in", False) + linear(f"{d}.project_out", "project_out", False)
    if cfg.final_norm:
        maps += norm(f"{d}.final_layer_norm", "norm", **layer_norm)
    if not cfg.tie_word_embeddings:
        maps += linear("lm_head", "lm_head", False)
    for i in range(cfg.num_layers):
        hf, ours = f"{d}.layers.{i}", f"layers.{i}"
        maps += norm(f"{hf}.self_attn_layer_norm", f"{ours}.input_layernorm", **layer_norm)
        maps += norm(f"{hf}.final_layer_norm", f"{ours}.post_attention_layernorm", **layer_norm)
        maps += attention_weights(cfg, hf, ours, names=("q_proj", "k_proj", "v_proj", "out_proj"))
        maps += linear(f"{hf}.fc1", f"{ours}.mlp.up_proj", cfg.mlp_bias)
        maps += linear(f"{hf}.fc2", f"{ours}.mlp.down_proj", cfg.mlp_bias)
    return maps


ARCHITECTURES = (Architecture(
    "OPTForCausalLM", _fields, _weights, "LayerNorm, ReLU MLP, learned positions (offset 2), pre- or post-norm, "
    "project_in/out", presets=PRESETS, checkpoint_name=prefix_adder("model.", keep=("lm_head",))),)
