"""What the families with Llama's checkpoint layout share: its config keys and its weight names
(`model.embed_tokens`, `model.layers.N.self_attn.{q,k,v,o}_proj`, `model.layers.N.mlp.{gate,up,down}_proj`,
`model.norm`, `lm_head`). Families with extra norms or other names add to or rename these."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from models import hf_config
from models.config import ModelConfig
from models.weights import TensorMap, embedding, linear, norm

ATTENTION = "self_attn"  # the attention module's name in Llama-layout checkpoints


def llama_fields(hf: Mapping[str, Any], **base_overrides) -> dict:
    """Llama's config keys: sizes, rms_norm_eps, rope, attention_bias (q, k, v, o) and mlp_bias."""
    fields = hf_config.base_fields(hf, **base_overrides)
    bias = bool(hf.get("attention_bias", False))
    fields.update(rope=hf_config.rope_config(hf, fields["head_dim"], fields["max_position_embeddings"]), qkv_bias=bias, o_bias=bias,
                  mlp_bias=bool(hf.get("mlp_bias", False)))
    return fields


def sliding_fields(hf: Mapping[str, Any], num_layers: int, *, gated_by_flag: bool) -> dict:
    """`sliding_window` and per-layer windows: from `layer_types` when the config has them; else
    every layer (Mistral) or, with `gated_by_flag`, layers from `max_window_layers` on when
    `use_sliding_window` is set (Qwen2/3's legacy configs)."""
    window = hf.get("sliding_window")
    if gated_by_flag and not hf.get("use_sliding_window", False):
        window = None
    windows = hf_config.layer_windows(hf, num_layers, window)
    if windows is None and gated_by_flag and window is not None:
        first = int(hf.get("max_window_layers", 0))
        windows = tuple(window if i >= first else None for i in range(num_layers))
    if windows is not None and all(w is None for w in windows):
        window, windows = None, None
    return dict(sliding_window=window, layer_windows=windows)


def attention_weights(cfg: ModelConfig, hf_layer: str, ours: str, *, hf_attn: str = ATTENTION,
                      names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> list[TensorMap]:
    """Separate q/k/v/o Linear weights (and q/k norms) of one layer."""
    maps = []
    for hf_name, ours_name, bias in zip(names, ("q_proj", "k_proj", "v_proj", "o_proj"),
                                        (cfg.qkv_bias,) * 3 + (cfg.o_bias,)):
        maps += linear(f"{hf_layer}.{hf_attn}.{hf_name}", f"{ours}.self_attn.{ours_name}", bias)
    return maps


def qk_norm_weights(cfg: ModelConfig, hf_attn: str, ours_attn: str, names=("q_norm", "k_norm")) -> list[TensorMap]:
    """The q/k norms' weights (per-head norms: one tensor per head)."""
    if cfg.qk_norm is None:
        return []
    bias = cfg.norm_bias if cfg.qk_norm_bias is None else cfg.qk_norm_bias
    maps = []
    for hf_name, ours_name, heads in zip(names, ("q_norm", "k_norm"), (cfg.num_heads, cfg.num_kv_heads)):
        if cfg.qk_norm == "per_head":
            for h in range(heads):
                maps += norm(f"{hf_attn}.{hf_name}.norms.{h}", f"{ours_attn}.{ours_name}.norms.{h}", bias=bias)
        else:
            maps += norm(f"{hf_attn}.{hf_name}", f"{ours_attn}.{ours_name}", bias=bias)
    return maps


def mlp_weights(cfg: ModelConfig, hf_mlp: str, ours: str, names=("gate_proj", "up_proj", "down_proj")) -> list[TensorMap]:
    """Separate gate/up/down (or up/down for a plain MLP) Linear weights."""
    ours_names = ("gate_proj", "up_proj", "down_proj") if cfg.mlp == "gated" else ("up_proj", "down_proj")
    hf_names = names if cfg.mlp == "gated" else names[-2:]
    maps = []
    for hf_name, ours_name in zip(hf_names, ours_names):
        maps += linear(f"{hf_mlp}.{hf_name}", f"{ours}.mlp.{ours_name}", cfg.mlp_bias)
    return maps


def layer_norm_weights(cfg: ModelConfig, hf_layer: str, ours: str, names: Mapping[str, str]) -> list[TensorMap]:
    """The layer's norms: `names` maps our norm names to the checkpoint's."""
    maps = []
    for ours_name, hf_name in names.items():
        maps += norm(f"{hf_layer}.{hf_name}", f"{ours}.{ours_name}", scale=cfg.norm_scale, bias=cfg.norm_bias)
    return maps


def head_weights(cfg: ModelConfig, hf_embed: str, hf_norm: str | None, hf_head: str = "lm_head") -> list[TensorMap]:
    """Token embedding, final norm and (untied) LM head."""
    maps = embedding(hf_embed, "embed_tokens")
    if cfg.final_norm and hf_norm is not None:
        maps += norm(hf_norm, "norm", scale=cfg.norm_scale, bias=cfg.norm_bias)
    if not cfg.tie_word_embeddings:
        maps += linear(hf_head, "lm_head", cfg.lm_head_bias)
    return maps


LLAMA_NORMS = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm"}


def _dense_feed_forward(cfg: ModelConfig, hf_layer: str, ours: str, layer: int) -> list[TensorMap]:
    return mlp_weights(cfg, f"{hf_layer}.mlp", ours)


def llama_weights(cfg: ModelConfig, prefix: str = "model.", norms: Mapping[str, str] = LLAMA_NORMS,
                  feed_forward: Callable[[ModelConfig, str, str, int], list[TensorMap]] = _dense_feed_forward
                  ) -> list[TensorMap]:
    """The whole Llama-layout weight map (q/k norms named q_norm / k_norm); `feed_forward(cfg,
    hf_layer, ours_layer, layer)` maps each layer's MLP (the mixture-of-experts families' own)."""
    maps = head_weights(cfg, f"{prefix}embed_tokens", f"{prefix}norm")
    for i in range(cfg.num_layers):
        hf_layer, ours = f"{prefix}layers.{i}", f"layers.{i}"
        maps += layer_norm_weights(cfg, hf_layer, ours, norms)
        maps += attention_weights(cfg, hf_layer, ours)
        maps += qk_norm_weights(cfg, f"{hf_layer}.self_attn", f"{ours}.self_attn")
        maps += feed_forward(cfg, hf_layer, ours, i)
    return maps
