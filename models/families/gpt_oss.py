"""GptOssForCausalLM (bf16 checkpoints; MXFP4 ones come with quantization): attention with q/k/v/o
biases, learned per-head sinks in the softmax, sliding windows on alternate layers (`layer_types`;
default: even layers windowed) and yarn RoPE; RMSNorm scaled in float32; a MoE on every layer
routed top-k over the logits of a router with a bias, then a softmax over those k; experts with
biases and GPT-OSS's clamped SwiGLU, stored stacked: `experts.gate_up_proj [E, H, 2I]` (gate and
up interleaved along the last axis), `experts.down_proj [E, I, H]`."""

from __future__ import annotations

from models import hf_config
from models.architecture import Architecture
from models.config import ModelConfig
from models.families._llama_like import llama_fields, llama_weights
from models.families._moe import PARTITION_RULES, moe_config
from models.weights import IDENTITY, Interleaved, TensorMap, linear

PRESETS = {
    # openai/gpt-oss-20b (its experts in bf16 here; the hub checkpoint's are MXFP4)
    "gpt-oss-20b": dict(architectures=["GptOssForCausalLM"], vocab_size=201088, hidden_size=2880,
                        intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64, num_key_value_heads=8,
                        head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, attention_bias=True,
                        num_local_experts=32, num_experts_per_tok=4, sliding_window=128, swiglu_limit=7.0,
                        rope_theta=150000.0, rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                                           "beta_slow": 1.0, "truncate": False,
                                                           "original_max_position_embeddings": 4096},
                        tie_word_embeddings=False, eos_token_id=200002, pad_token_id=199999, dtype="bfloat16"),
}


def _fields(hf) -> dict:
    fields = llama_fields(hf)
    num_layers, window = fields["num_layers"], hf.get("sliding_window")
    windows = hf_config.layer_windows(hf, num_layers, window)
    if windows is None:  # HF's default: layers 0, 2, 4, ... windowed
        windows = tuple(window if (i + 1) % 2 else None for i in range(num_layers))
    bias = bool(hf.get("attention_bias", True))
    moe = moe_config(hf, intermediate=("intermediate_size",), routing="topk_softmax", router_bias=True,
                     expert_bias=True, expert_mlp="clamped_swiglu", swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
                     swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)))
    return {**fields, "qkv_bias": bias, "o_bias": bias, "norm_scale_in_float32": True, "attention_sinks": True,
            "sliding_window": window if any(w is not None for w in windows) else None,
            "layer_windows": windows if any(w is not None for w in windows) else None, "moe": moe}


def _feed_forward(cfg: ModelConfig, hf_layer: str, ours: str, layer: int) -> list[TensorMap]:
    hf_experts, experts = f"{hf_layer}.mlp.experts", f"{ours}.mlp.experts"
    gate_up = Interleaved(2)
    return (linear(f"{hf_layer}.mlp.router", f"{ours}.mlp.router", True)
            + [TensorMap(f"{hf_experts}.gate_up_proj", (f"{experts}.gate_proj.kernel", f"{experts}.up_proj.kernel"),
                         gate_up),
               TensorMap(f"{hf_experts}.gate_up_proj_bias", (f"{experts}.gate_proj.bias", f"{experts}.up_proj.bias"),
                         gate_up),
               TensorMap(f"{hf_experts}.down_proj", (f"{experts}.down_proj.kernel",), IDENTITY),
               TensorMap(f"{hf_experts}.down_proj_bias", (f"{experts}.down_proj.bias",), IDENTITY)])


def _weights(cfg: ModelConfig) -> list[TensorMap]:
    sinks = [TensorMap(f"model.layers.{i}.self_attn.sinks", (f"layers.{i}.self_attn.sinks",))
             for i in range(cfg.num_layers)]
    return llama_weights(cfg, feed_forward=_feed_forward) + sinks


ARCHITECTURES = (Architecture("GptOssForCausalLM", _fields, _weights,
                              "attention sinks, alternating sliding windows, yarn RoPE, top-k-then-softmax MoE with "
                              "router bias and clamped SwiGLU experts", partition_rules=PARTITION_RULES,
                              presets=PRESETS),)
