"""Qwen3ForCausalLM: RMSNorm over head_dim on q and k before RoPE; `attention_bias` on q, k, v, o."""

ARCHITECTURE = "Qwen3ForCausalLM"


def flags(hf: dict) -> dict:
    bias = bool(hf.get("attention_bias", False))
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    return dict(qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=window)
