"""Model presets: real architectures' shapes with random weights, created directly on the device.

Benchmarks need a model's shape, not its knowledge: `random_params(cfg, dtype)` draws N(0, std)
weights (ones for norms) inside one jitted function, so an 8B model materialises on the GPU
without a download or a host copy. Presets carry no tokenizer; prompts are token ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig
from models.loader import abstract_model

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_theta": 500000.0}

# HF config.json contents of each preset (only the fields the models read).
PRESETS: dict[str, dict] = {
    "llama-3.2-1b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={**_LLAMA3_ROPE, "factor": 32.0}, tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=128001, dtype="bfloat16"),
    "llama-3.1-8b": dict(architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={**_LLAMA3_ROPE, "factor": 8.0}, tie_word_embeddings=False,
                         bos_token_id=128000, eos_token_id=128001, dtype="bfloat16"),
    "qwen2.5-7b": dict(architectures=["Qwen2ForCausalLM"], vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                       tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643, dtype="bfloat16"),
}


def preset_config(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig.from_hf_dict(PRESETS[name])


def random_params(cfg: ModelConfig, dtype, *, seed: int = 0, std: float = 0.02, sharding_for=None):
    """(graphdef, state) with random weights generated on the device (or into `sharding_for(path)`)."""
    graphdef, abstract_state = abstract_model(cfg, dtype)
    flat = list(nnx.to_flat_state(abstract_state))
    paths = [path for path, _ in flat]
    shapes = [var.get_value().shape for _, var in flat]
    is_norm = ["norm" in str(path[-2]) for path in paths]

    def make():
        keys = jax.random.split(jax.random.key(seed), len(paths))
        return [jnp.ones(shape, dtype) if norm else (jax.random.normal(k, shape, jnp.float32) * std).astype(dtype)
                for k, shape, norm in zip(keys, shapes, is_norm)]

    out_shardings = [sharding_for(p) for p in paths] if sharding_for else None
    values = jax.jit(make, out_shardings=out_shardings)()
    for (_, var), value in zip(flat, values):
        var.set_value(value)
    return graphdef, nnx.from_flat_state(flat)
