"""Qwen2MoeForCausalLM: Qwen2's attention (q/k/v bias) with a sparse MoE (softmax, top-k,
renormalised iff `norm_topk_prob`) plus a shared expert every token takes, scaled by
sigmoid(shared_expert_gate(x)); dense MLP layers where `mlp_only_layers` / `decoder_sparse_step`
say. Sliding windows as HF's `layer_types` (default: odd layers below `max_window_layers`)."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights
from models.families._moe import PARTITION_RULES, moe_config, sparse_feed_forward

PRESETS = {
    # Qwen/Qwen1.5-MoE-A2.7B
    "qwen1.5-moe-a2.7b": dict(architectures=["Qwen2MoeForCausalLM"], vocab_size=151936, hidden_size=2048,
                              intermediate_size=5632, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                              num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                              max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=1000000.0, num_experts=60,
                              num_experts_per_tok=4, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
                              tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151643, dtype="bfloat16"),
}


def _windows(hf, num_layers: int) -> dict:
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    windows = hf_config.layer_windows(hf, num_layers, window)
    if windows is None and window:
        below = int(hf.get("max_window_layers", 28))
        windows = tuple(window if (i + 1) % 2 and i < below else None for i in range(num_layers))
    if windows is None or all(w is None for w in windows):
        return dict(sliding_window=None, layer_windows=None)
    return dict(sliding_window=window, layer_windows=windows)


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    moe = moe_config(hf, norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                     shared_expert_intermediate_size=int(hf.get("shared_expert_intermediate_size") or 0))
    return {**fields, "qkv_bias": bool(hf.get("qkv_bias", True)), "o_bias": False,
            "activation": hf_config.activation(hf.get("hidden_act", "silu")), "moe": moe,
            **_windows(hf, fields["num_layers"])}


def _weights(cfg):
    return llama_weights(cfg, feed_forward=sparse_feed_forward())


ARCHITECTURES = (Architecture("Qwen2MoeForCausalLM", _fields, _weights,
                              "Qwen2's attention, top-k MoE with a sigmoid-gated shared expert, dense layers by "
                              "mlp_only_layers / decoder_sparse_step", partition_rules=PARTITION_RULES, presets=PRESETS),)
