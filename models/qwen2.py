"""Qwen2ForCausalLM: bias on the q/k/v projections (not on o)."""

ARCHITECTURE = "Qwen2ForCausalLM"


def flags(hf: dict) -> dict:
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    return dict(qkv_bias=True, o_bias=False, sliding_window=window)
