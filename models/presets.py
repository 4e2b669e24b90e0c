"""Model presets: real architectures' shapes with random weights, created directly on the device.

Benchmarks need a model's shape, not its knowledge: `random_params(cfg, dtype)` draws N(0, std)
weights (norms at their identity) inside one jitted function, so an 8B model materialises on the GPU
without a download or a host copy. Presets carry no tokenizer; prompts are token ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig
from models.loader import abstract_model
from models.registry import ARCHITECTURES
from models.transformer import init_constant

# HF config.json contents of each preset (only the fields the models read), gathered from every
# family's Architecture. NOTE: a plain dict, as callers have always had it (tests add presets to it).
PRESETS: dict[str, dict] = {name: config for arch in ARCHITECTURES.values() for name, config in arch.presets.items()}


def preset_config(name: str) -> ModelConfig:
    """The `ModelConfig` of preset `name`; ValueError listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig.from_hf_dict(PRESETS[name])


def random_params(cfg: ModelConfig, dtype, *, seed: int = 0, std: float = 0.02, sharding_for=None):
    """(graphdef, state) with random weights generated on the device (or into `sharding_for(path)`)."""
    graphdef, abstract_state = abstract_model(cfg, dtype)
    flat = list(nnx.to_flat_state(abstract_state))
    paths = [path for path, _ in flat]
    shapes = [var.get_value().shape for _, var in flat]
    constants = [init_constant(cfg, path) for path in paths]

    def make():
        keys = jax.random.split(jax.random.key(seed), len(paths))
        return [(jax.random.normal(k, shape, jnp.float32) * std).astype(dtype) if c is None
                else jnp.full(shape, c, dtype) for k, shape, c in zip(keys, shapes, constants)]

    out_shardings = [sharding_for(p) for p in paths] if sharding_for else None
    values = jax.jit(make, out_shardings=out_shardings)()
    for (_, var), value in zip(flat, values):
        var.set_value(value)
    return graphdef, nnx.from_flat_state(flat)
