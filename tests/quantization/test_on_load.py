"""`quantization="int8" | "fp8"` on a float checkpoint through `LLM.generate`: every linear layer
but the LM head quantized per output channel on load (int8 weight-only; fp8 weights with fp8
activations scaled per token), greedy parity with HF transformers running the same per-channel
weights (re-derived in numpy) and, for fp8, the same activation quantization; fused (Phi-3) and
Conv1D (GPT-2) layers included. The parameters shrink to int8 / fp8 plus float32 scales."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from models.config import ModelConfig
from models.loader import abstract_model
from models.quantization import param_bytes
from pagedjax import LLM, SamplingParams
from tests.checkpoints import reference_dir, tokenizer
from tests.quantization.hf_reference import fp8_input_hook, greedy, per_channel_dequantized

TEXTS = ["Return the value", "The quick brown fox jumps over the lazy dog"]
GREEDY_TOKENS = 32
ENGINE_ARGS = dict(num_kv_blocks=16, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=16, block_size=16)
CASES = [("llama", "int8"), ("llama", "fp8"), ("phi3-longrope", "fp8"), ("gpt2", "int8")]


def hf_reference(model_dir: str, method: str):
    """(HF model with each linear layer but lm_head replaced by its per-channel quantization,
    float32 bytes those layers lose: 3 per weight (int8 / fp8 instead of float32) less 4 per
    output channel (the scales))."""
    import torch
    import transformers
    from transformers.pytorch_utils import Conv1D

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    saved = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, (torch.nn.Linear, Conv1D)) or name == "lm_head":
            continue
        w = layer.weight.detach().numpy()
        out_axis = 1 if isinstance(layer, Conv1D) else 0  # Conv1D weights are [in, out]
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(per_channel_dequantized(w, method, out_axis)))
        if method == "fp8":
            layer.register_forward_pre_hook(fp8_input_hook(dynamic=True))
        saved += 3 * w.size - 4 * w.shape[out_axis]
    return model, saved


@pytest.mark.parametrize("variant,method", CASES)
def test_on_load_generate_matches_hf(variant, method, checkpoint_factory):
    model_dir = checkpoint_factory(variant)
    prompts = [tokenizer()(t).input_ids for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True)
    llm = LLM(model_dir, quantization=method, **ENGINE_ARGS)
    got = [list(o.outputs[0].token_ids) for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                                                use_tqdm=False)]
    reference, saved = hf_reference(reference_dir(model_dir), method)
    assert got == greedy(reference, prompts, GREEDY_TOKENS)
    assert all(len(set(g)) > 4 for g in got), got
    _, float_state = abstract_model(ModelConfig.from_pretrained(model_dir), jnp.float32)
    assert param_bytes(float_state) - llm.stats()["param_bytes"] == saved
