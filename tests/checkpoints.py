"""Tiny random-weight HF checkpoints for tests, built with transformers (PyTorch CPU).

Weights use std 0.15 (`initializer_range`) so greedy output does not collapse into one
repeated token; every checkpoint carries the trained byte-level BPE tokenizer of the default
model. `VARIANTS` names every architecture and rope-scaling type the models support.
"""

from __future__ import annotations

import functools
import os

from pagedjax.default_model import train_tokenizer

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.15,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

# name -> (HF config class name, config overrides)
VARIANTS = {
    "llama": ("LlamaConfig", dict(head_dim=16)),
    "llama-tied-headdim32": ("LlamaConfig", dict(head_dim=32, tie_word_embeddings=True, attention_bias=True)),
    "llama-mha": ("LlamaConfig", dict(num_key_value_heads=4)),
    # GQA group of 4: tensor parallelism up to 8 ways, KV heads replicated beyond 2
    "llama-8q2kv": ("LlamaConfig", dict(num_attention_heads=8, head_dim=16)),
    "llama-rope-linear": ("LlamaConfig", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama-rope-dynamic": ("LlamaConfig", dict(max_position_embeddings=24,
                                               rope_scaling={"rope_type": "dynamic", "factor": 4.0})),
    "llama-rope-llama3": ("LlamaConfig", dict(rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "mistral": ("MistralConfig", dict(head_dim=16, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict()),
    "qwen3": ("Qwen3Config", dict(head_dim=16)),
}


@functools.lru_cache(maxsize=1)
def tokenizer():
    return train_tokenizer()


def build_checkpoint(variant: str, out_dir: str, dtype: str = "float32", seed: int = 0) -> str:
    """Writes a random-weight checkpoint of `variant` (HF `save_pretrained`) plus the tokenizer."""
    import torch
    import transformers

    cls_name, overrides = VARIANTS[variant]
    tok = tokenizer()
    config = getattr(transformers, cls_name)(vocab_size=len(tok), **{**BASE, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
