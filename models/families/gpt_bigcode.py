"""GPTBigCodeForCausalLM (StarCoder, SantaCoder): GPT-2's block with Linear layers and
multi-query attention: c_attn is q | k | v with one KV head (or per-head [H, 3, D] without MQA)."""

from __future__ import annotations

from models.architecture import Architecture
from models.config import ModelConfig
from models.families.gpt2 import gpt2_style_fields, gpt2_style_weights
from models.weights import GroupedQKV, TensorMap


def _fields(hf) -> dict:
    fields = gpt2_style_fields(hf)
    multi_query = bool(hf.get("multi_query", True))
    return {**fields, "num_kv_heads": 1 if multi_query else fields["num_heads"],
            "activation": fields["activation"] if hf.get("activation_function") else "gelu_tanh"}


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    # MQA: [q (H*D) | k (D) | v (D)] = one KV group of H queries; MHA: per head [q, k, v].
    return gpt2_style_weights(cfg, GroupedQKV(cfg.num_kv_heads, cfg.q_per_kv, cfg.head_dim), conv=False)


ARCHITECTURES = (Architecture("GPTBigCodeForCausalLM", _fields, _weights,
                              "GPT-2's block with Linear layers, multi-query attention"),)
