"""Readers of HF `config.json` keys the families share (each family's `config_fields` uses them)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from models.config import RopeConfig

_MISSING = object()
# HF activation names -> ours (models/blocks/common.py)
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
                "relu": "relu"}
_ROPE_ALIASES = {"su": "longrope"}  # Phi-3's early configs


def get(hf: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    """The value of the first of `names` present (and not None) in `hf`; ValueError if none and no default."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is _MISSING:
        raise ValueError(f"config.json lacks {' / '.join(names)}")
    return default


def activation(name: str) -> str:
    """Our activation for an HF `hidden_act` / `activation_function` name."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(sorted(_ACTIVATIONS))})")
    return _ACTIVATIONS[name]


def base_fields(hf: Mapping[str, Any], *, vocab: Sequence[str] = ("vocab_size",),
                hidden: Sequence[str] = ("hidden_size",), intermediate: Sequence[str] | None = ("intermediate_size",),
                layers: Sequence[str] = ("num_hidden_layers",), heads: Sequence[str] = ("num_attention_heads",),
                kv_heads: Sequence[str] = ("num_key_value_heads",),
                max_positions: Sequence[str] = ("max_position_embeddings",), max_positions_default: int = 2048,
                eps: Sequence[str] = ("rms_norm_eps",), eps_default: float = 1e-6,
                tie_default: bool = False) -> dict:
    """The fields every family has, read under the family's key names (alternatives in order)."""
    hidden_size = int(get(hf, *hidden))
    num_heads = int(get(hf, *heads))
    fields = dict(
        vocab_size=int(get(hf, *vocab)),
        hidden_size=hidden_size,
        num_layers=int(get(hf, *layers)),
        num_heads=num_heads,
        num_kv_heads=int(get(hf, *kv_heads, default=num_heads)),
        head_dim=int(get(hf, "head_dim", default=hidden_size // num_heads)),
        max_position_embeddings=int(get(hf, *max_positions, default=max_positions_default)),
        norm_eps=float(get(hf, *eps, default=eps_default)),
        tie_word_embeddings=bool(get(hf, "tie_word_embeddings", default=tie_default)),
    )
    if intermediate is not None:
        fields["intermediate_size"] = int(get(hf, *intermediate, default=4 * hidden_size))
    return fields


def rope_parameters(hf: Mapping[str, Any], layer_type: str | None = None) -> dict:
    """The rotary parameters dict (v5 `rope_parameters`, else legacy `rope_scaling` + `rope_theta`);
    `layer_type` picks one of a per-layer-type nested dict (Gemma 3)."""
    params = dict(hf.get("rope_parameters") or {})
    if layer_type is not None and isinstance(params.get(layer_type), Mapping):
        params = dict(params[layer_type])
    elif any(isinstance(v, Mapping) for v in params.values()):
        params = dict(params.get("full_attention") or {})
    scaling = hf.get("rope_scaling") or {}
    return {**scaling, **params}


def rope_config(hf: Mapping[str, Any], head_dim: int, max_position_embeddings: int, *,
                params: Mapping[str, Any] | None = None,
                rotary_dim: int | None = None, interleaved: bool = False, default_theta: float = 10000.0,
                partial_keys: Sequence[str] = ("partial_rotary_factor",)) -> RopeConfig:
    """A `RopeConfig` from `params` (default: `rope_parameters(hf)`); partial rotary from
    `rotary_dim` or a factor under `partial_keys` (in the rope dict or the config)."""
    params = rope_parameters(hf) if params is None else dict(params)
    max_pos = max_position_embeddings
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    rope_type = _ROPE_ALIASES.get(rope_type, rope_type)
    if rotary_dim is None:
        factor = next((src[k] for k in partial_keys for src in (params, hf) if src.get(k) is not None), None)
        if factor is not None and float(factor) != 1.0:
            rotary_dim = int(head_dim * float(factor))
    original = params.get("original_max_position_embeddings")
    if rope_type == "longrope" and hf.get("original_max_position_embeddings") is not None:
        original = hf["original_max_position_embeddings"]  # Phi-3 keeps it at the top level, and HF prefers it
    if rope_type in ("llama3", "yarn", "longrope") and original is None:
        original = max_pos
    factor = params.get("factor")
    if factor is None and rope_type in ("yarn", "longrope") and max_pos and original:
        factor = max_pos / original
    optional = {k: params[k] for k in ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "mscale",
                                       "mscale_all_dim", "attention_factor", "truncate") if params.get(k) is not None}
    return RopeConfig(
        theta=theta, rope_type=rope_type, factor=float(1.0 if factor is None else factor),
        original_max_position_embeddings=None if original is None else int(original),
        short_factor=tuple(map(float, params["short_factor"])) if params.get("short_factor") else None,
        long_factor=tuple(map(float, params["long_factor"])) if params.get("long_factor") else None,
        rotary_dim=rotary_dim, interleaved=interleaved,
        **{k: (bool(v) if k == "truncate" else float(v)) for k, v in optional.items()})


def layer_windows(hf: Mapping[str, Any], num_layers: int, window: int | None) -> tuple[int | None, ...] | None:
    """Per-layer windows from HF `layer_types` ("sliding_attention" layers get `window`);
    None when the config has no `layer_types` (every layer then follows `sliding_window`)."""
    types_ = hf.get("layer_types")
    if not types_:
        return None
    if len(types_) != num_layers:
        raise ValueError(f"layer_types has {len(types_)} entries for {num_layers} layers")
    return tuple(window if t == "sliding_attention" else None for t in types_)
