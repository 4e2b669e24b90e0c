"""GPTQ and AWQ checkpoints (packed from known float weights, packed_checkpoints.py) through
`LLM.generate`: greedy parity with HF transformers running the float checkpoint of the weights
they dequantize to; the parameters stay quantized (stats' param_bytes counts the packed
arrays). Families with fused checkpoint layers: Phi-3 (q|k|v and gate|up concatenated),
Falcon's new decoder (q/k/v grouped per KV head, with biases), GPT-2 (Conv1D weights [in, out])."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import pytest

from models.config import ModelConfig
from models.loader import abstract_model
from models.quantization import param_bytes
from pagedjax import LLM, SamplingParams
from tests.checkpoints import tokenizer
from tests.quantization.hf_reference import greedy
from tests.quantization.packed_checkpoints import PackedSpec, linear_weights, write_packed_checkpoint

TEXTS = ["Return the value", "The quick brown fox jumps over the lazy dog"]  # 27 tokens: chunked at 16
GREEDY_TOKENS = 32
ENGINE_ARGS = dict(num_kv_blocks=16, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=16, block_size=16)
CASES = {
    "gptq4-g32-sym-act-order": ("llama", PackedSpec("gptq", 4, 32, sym=True, desc_act=True)),
    "gptq4-g24-asym-v1": ("llama", PackedSpec("gptq", 4, 24, sym=False, version=1)),  # a partial last group
    "gptq8-channel-asym-v2-lm-head": ("llama", PackedSpec("gptq", 8, -1, sym=False, version=2, lm_head=True)),
    "awq-g32": ("llama", PackedSpec("awq", 4, 32, sym=False)),
    "phi3-gptq4-g16-asym": ("phi3-longrope", PackedSpec("gptq", 4, 16, sym=False, version=2)),
    "falcon-awq-g16": ("falcon-new-decoder", PackedSpec("awq", 4, 16, sym=False)),
    "gpt2-gptq8-g32-act-order": ("gpt2", PackedSpec("gptq", 8, 32, sym=True, desc_act=True)),
}


@pytest.fixture(scope="module")
def packed(checkpoint_factory, tmp_path_factory):
    """`packed(case)` -> (quantized dir, dequantized float dir), built once."""
    @functools.lru_cache(maxsize=None)
    def build(case: str):
        variant, spec = CASES[case]
        return write_packed_checkpoint(checkpoint_factory(variant), str(tmp_path_factory.mktemp(case)), spec)
    return build


def hf_greedy(model_dir: str, prompts) -> list[list[int]]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return greedy(model, prompts, GREEDY_TOKENS)


# Fused checkpoint layers and the projections the engine splits them into (each keeps a g_idx).
FUSED_PARTS = {"c_attn": 3, "qkv_proj": 3, "gate_up_proj": 2, "query_key_value": 3}


def expected_bytes_saved(model_dir: str, spec: PackedSpec) -> int:
    """float32 bytes of the quantized layers minus their packed arrays' bytes (qweight of
    bits / 8 bytes per weight, float16 scales, int8 / int16 zero points when asymmetric, i32
    g_idx with act order, one per projection), from the HF model's own layer shapes."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    saved = 0
    for name, is_conv1d in linear_weights(model_dir).items():
        if name == "lm_head" and not spec.lm_head:
            continue
        w = model.get_submodule(name).weight
        k, n = w.shape if is_conv1d else w.shape[::-1]
        groups = 1 if spec.group_size == -1 else math.ceil(k / spec.group_size)
        packed = k * n * spec.bits // 8 + groups * n * 2
        packed += 0 if spec.sym else groups * n * (1 if spec.bits == 4 else 2)
        packed += 4 * k * FUSED_PARTS.get(name.rsplit(".", 1)[-1], 1) if spec.desc_act else 0
        saved += 4 * k * n - packed
    return saved


@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_matches_hf_on_the_dequantized_weights(case, packed):
    quant_dir, float_dir = packed(case)
    prompts = [tokenizer()(t).input_ids for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True)
    llm = LLM(quant_dir, **ENGINE_ARGS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    assert got == hf_greedy(float_dir, prompts)
    assert all(len(set(g)) > 4 for g in got), got  # not collapsed into a repeated token
    _, float_state = abstract_model(ModelConfig.from_pretrained(float_dir), jnp.float32)
    assert param_bytes(float_state) - llm.stats()["param_bytes"] == expected_bytes_saved(float_dir, CASES[case][1])


def test_quantized_kv_pool_with_quantized_weights_matches_the_float_model_on_the_same_pool(packed):
    """Quantized weights beside a quantized (int8, per-token scales) KV pool: the same tokens as
    the dequantized float checkpoint on a pool of the same kv_cache_dtype."""
    kv_cache_dtype = "int8"
    quant_dir, float_dir = packed("awq-g32")
    prompts = [{"prompt_token_ids": tokenizer()(t).input_ids} for t in TEXTS]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    got = []
    for model_dir in (quant_dir, float_dir):
        llm = LLM(model_dir, kv_cache_dtype=kv_cache_dtype, **ENGINE_ARGS)
        got.append([list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)])
        assert llm.stats()["kv_cache_dtype"] == kv_cache_dtype
    assert got[0] == got[1]
