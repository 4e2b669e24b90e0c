"""MixtralForCausalLM: Llama's attention (optional sliding window on every layer) with a sparse
MoE on every layer: softmax over the experts, top-k, the k weights renormalised to sum to 1;
experts `block_sparse_moe.experts.N.{w1, w3, w2}` (gate, up, down), router `block_sparse_moe.gate`."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.families._llama_like import llama_fields, llama_weights, sliding_fields
from models.families._moe import PARTITION_RULES, moe_config, sparse_feed_forward

PRESETS = {
    # mistralai/Mixtral-8x7B-v0.1
    "mixtral-8x7b": dict(architectures=["MixtralForCausalLM"], vocab_size=32000, hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
                         rope_theta=1000000.0, num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, dtype="bfloat16"),
}


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    moe = moe_config(hf, intermediate=("intermediate_size",), norm_topk_prob=True)
    return {**fields, **sliding_fields(hf, fields["num_layers"], gated_by_flag=False),
            "activation": hf_config.activation(hf.get("hidden_act", "silu")), "moe": moe}


def _weights(cfg):
    return llama_weights(cfg, feed_forward=sparse_feed_forward(block="block_sparse_moe", experts=("w1", "w3", "w2")))


ARCHITECTURES = (Architecture("MixtralForCausalLM", _fields, _weights,
                              "Llama's attention, top-k MoE (softmax, renormalised) on every layer",
                              partition_rules=PARTITION_RULES, presets=PRESETS),)
