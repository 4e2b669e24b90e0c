"""Qwen3MoeForCausalLM: Qwen3's attention (q/k RMSNorm per head, `attention_bias`) with a sparse
MoE (softmax, top-k, renormalised iff `norm_topk_prob`), no shared expert; dense MLP layers where
`mlp_only_layers` / `decoder_sparse_step` say; a sliding window on every layer iff
`use_sliding_window` (HF's Qwen3-MoE)."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights
from models.families._moe import PARTITION_RULES, moe_config, sparse_feed_forward

PRESETS = {
    # Qwen/Qwen3-30B-A3B
    "qwen3-30b-a3b": dict(architectures=["Qwen3MoeForCausalLM"], vocab_size=151936, hidden_size=2048,
                          intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=40960,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, num_experts=128, num_experts_per_tok=8,
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
                          tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645, dtype="bfloat16"),
}


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    moe = moe_config(hf, norm_topk_prob=bool(hf.get("norm_topk_prob", False)))
    return {**fields, "qk_norm": "head", "sliding_window": window, "layer_windows": None,
            "activation": hf_config.activation(hf.get("hidden_act", "silu")), "moe": moe}


def _weights(cfg):
    return llama_weights(cfg, feed_forward=sparse_feed_forward())


ARCHITECTURES = (Architecture("Qwen3MoeForCausalLM", _fields, _weights,
                              "Qwen3's attention (q/k norms), top-k MoE, dense layers by mlp_only_layers / "
                              "decoder_sparse_step", partition_rules=PARTITION_RULES, presets=PRESETS),)
