"""MistralForCausalLM: Llama's layers plus an optional sliding attention window."""

ARCHITECTURE = "MistralForCausalLM"


def flags(hf: dict) -> dict:
    return dict(sliding_window=hf.get("sliding_window"))
