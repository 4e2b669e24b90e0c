"""The first stage of building an engine: `EngineConfig` -> a `LoadedModel`.

Resolves the model (a checkpoint directory, a hub id, or a preset with random weights made on
the device), its config (with its quantization: the checkpoint's, or `quantization="int8" |
"fp8"` on load; quantized matmuls on the Pallas kernel where attention runs it), the tokenizer, the tensor-parallel mesh, the dtype, the context
length and the EOS ids, and loads the parameters (each tensor straight to its device or
shards). Nothing is loaded twice; the runner and the scheduler are built from the result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time

import jax

from models.config import ModelConfig
from models.loader import load_params, resolve_dtype
from models.quantization.linear import backend_for_attention
from models.presets import PRESETS, preset_config, random_params
from models.sharding import check_tensor_parallel, make_mesh, param_sharding_fn
from pagedjax.config import EngineConfig
from pagedjax.model_checks import check_checkpoint_dir, load_tokenizer, resolve_checkpoint

logger = logging.getLogger("pagedjax")


@dataclasses.dataclass
class LoadedModel:
    """Everything the engine's runner and scheduler are built from."""

    config: EngineConfig
    model_config: ModelConfig
    model_dir: str | None  # None for a preset (random weights, no tokenizer)
    tokenizer: object | None
    mesh: jax.sharding.Mesh | None
    dtype: object
    graphdef: object
    params: object
    max_model_len: int
    kv_scales: tuple | None  # an fp8 KV cache's (k_scale, v_scale) f32[num_layers] from the checkpoint
    eos_token_id: int | None  # the tokenizer's (else the config's first)
    extra_eos_ids: tuple[int, ...]  # generation_config.json's and the config's other EOS ids
    load_seconds: float


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache (under pagedjax's cache dir) unless the user
    configured one, so a second start-up skips compilation."""
    from pagedjax.default_model import cache_dir

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_dir(), "xla"))
        # every step: small models compile in under jax's default threshold (1 s) too
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _generation_eos_ids(model_dir: str) -> tuple[int, ...]:
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.exists(path):
        return ()
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _tensor_parallel(cfg: ModelConfig, tp: int):
    """(mesh, sharding_for) for `tp` devices; (None, None) for one. ValueError when `cfg` cannot
    be split `tp` ways or there are fewer than `tp` devices."""
    if tp == 1:
        return None, None
    mesh = make_mesh(tp)
    check_tensor_parallel(cfg, tp)
    return mesh, param_sharding_fn(cfg, mesh)


def resolve_max_model_len(cfg: ModelConfig, requested: int | None) -> int:
    """The context length: the model's (max_position_embeddings; sliding windows do not cap it:
    the kernels attend within each layer's window) unless a shorter one is requested."""
    derived = cfg.max_position_embeddings
    if requested is None:
        return derived
    if requested > derived:
        raise ValueError(f"max_model_len ({requested}) is larger than the model's maximum context "
                         f"({derived}: max_position_embeddings)")
    return requested


def every_layer_window(cfg: ModelConfig) -> int | None:
    """The window when every layer attends to a sliding window (the scheduler then gives back
    blocks outside it), else None."""
    windows = cfg.layer_sliding_windows()
    return max(windows) if windows and all(w is not None for w in windows) else None


def checkpoint_kv_scales(model_dir: str | None, num_layers: int) -> tuple | None:
    """(k_scale, v_scale) f32[num_layers] from a checkpoint that ships them (vLLM's
    `model.layers.N.self_attn.{k,v}_scale`; the older `kv_scale` serves both), else None."""
    if model_dir is None:
        return None
    import numpy as np

    from models.loader import checkpoint_files
    from models.safetensors_io import SafetensorsFile

    found: dict[tuple[int, str], float] = {}
    pattern = re.compile(r".*layers\.(\d+)\..*\b(k_scale|v_scale|kv_scale)$")
    try:
        files = checkpoint_files(model_dir)
    except (FileNotFoundError, ValueError):
        return None  # an orbax checkpoint of `pagedjax convert`
    for path in files:
        st = SafetensorsFile(path)
        for name in st.names():
            match = pattern.match(name)
            if match:
                layer, kind = int(match.group(1)), match.group(2)
                value = float(np.asarray(st.get(name), np.float32).reshape(-1)[0])
                for k in (("k_scale", "v_scale") if kind == "kv_scale" else (kind,)):
                    found[(layer, k)] = value
    if not found:
        return None
    default = 1.0
    return tuple(np.array([found.get((i, k), default) for i in range(num_layers)], np.float32)
                 for k in ("k_scale", "v_scale"))


def load_model(config: EngineConfig) -> LoadedModel:
    """Resolves and loads everything `config` names (see the module docstring)."""
    from pagedjax.default_model import resolve_default_model

    start = time.perf_counter()
    enable_compilation_cache()
    model = resolve_default_model(config.model)  # None / "default" / DEFAULT_MODEL_NAME: the shipped model
    is_preset = model in PRESETS and not os.path.isdir(model)
    if is_preset:  # real shapes, random weights made on the device, no tokenizer
        if config.quantization is not None:
            raise ValueError(f"quantization={config.quantization!r} needs a checkpoint; preset {model!r} has"
                             " random float weights")
        model_dir, cfg = None, preset_config(model)
    else:  # friendly errors (model_checks) for a missing directory, config, weights or tokenizer
        model_dir = resolve_checkpoint(model)
        check_checkpoint_dir(model_dir)
        cfg = ModelConfig.from_pretrained(model_dir, quantization=config.quantization)
    cfg = cfg.with_expert_parallel(config.enable_expert_parallel)
    mesh, sharding_for = _tensor_parallel(cfg, config.tensor_parallel_size)
    tokenizer_path = resolve_checkpoint(config.tokenizer) if config.tokenizer else model_dir
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path and not config.skip_tokenizer_init else None
    max_model_len = resolve_max_model_len(cfg, config.max_model_len)
    dtype = resolve_dtype(config.dtype, cfg)
    if is_preset:
        graphdef, params = random_params(cfg, dtype, seed=config.seed, sharding_for=sharding_for)
    else:  # safetensors, or an orbax checkpoint of `pagedjax convert`
        linear_backend = backend_for_attention(config.resolved_backend(jax.default_backend()))
        graphdef, params = load_params(cfg, model_dir, dtype, sharding_for=sharding_for,
                                       linear_backend=linear_backend)
    tok_eos = tokenizer.eos_token_id if tokenizer is not None else None
    eos = tok_eos if tok_eos is not None else (cfg.eos_token_ids or (None,))[0]
    extra = set(_generation_eos_ids(model_dir) if model_dir else ()) | set(cfg.eos_token_ids)
    kv_scales = checkpoint_kv_scales(model_dir, cfg.num_layers) if config.kv_cache_dtype.startswith("fp8") else None
    return LoadedModel(config, cfg, model_dir, tokenizer, mesh, dtype, graphdef, params, max_model_len, kv_scales,
                       eos, tuple(sorted(extra - {eos})), time.perf_counter() - start)
