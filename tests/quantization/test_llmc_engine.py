"""llm-compressor checkpoints (fixtures/llmc) through `LLM.generate`: greedy parity with HF
transformers loading the same files.

HF decompresses compressed-tensors on CPU into bfloat16 weights; the engine runs float32 and
multiplies by the exact dequantized weight, so the reference's quantized layers get that exact
weight, re-derived here in float64 from the raw tensors (bit fields, zero points, scales), with
its bfloat16 rounding checked equal to HF's own decompression. HF runs fp8 W8A8 layers with
float activations; the reference quantizes each layer's input as vLLM does (dynamic per token
or per token group of features, or the static per-tensor input_scale: amax / 448, clip, round
to float8_e4m3fn), in torch, before the layer.

NOTE: with dynamic scales, the first layer's input of some tokens has elements exactly on an fp8
rounding midpoint (x / (amax / 448) = 448 x / amax of bfloat16 embedding rows: ratios of short
mantissas); which way they round then rests on the last float32 bit of the RMSNorm, where torch
and XLA differ, and one element moving by an fp8 step (1/16) changes every later logit by ~0.1.
Those tokens (found here in float64) are kept out of the prompts and of both greedy decodes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from models.safetensors_io import SafetensorsFile
from tests.quantization.hf_reference import FP8_MAX, fp8_input_hook, greedy
from pagedjax import LLM, SamplingParams

FIXTURES = Path(__file__).parent / "fixtures" / "llmc"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
PROMPTS = [[1, 5, 9, 33, 70], [1] + list(range(10, 30)), [7, 7, 100, 3]]  # 21 tokens: chunked at 16
GREEDY_TOKENS = 24
ENGINE_ARGS = dict(skip_tokenizer_init=True, dtype="float32", num_kv_blocks=16, max_model_len=64, max_num_seqs=4,
                   max_num_batched_tokens=16)


def unpack_last_axis(words: np.ndarray, bits: int, length: int) -> np.ndarray:
    """int32 words [R, W] -> unsigned values [R, length]: value i of a word at bits [bits*i, bits*(i+1))."""
    u = words.astype(np.int64) & 0xFFFFFFFF
    fields = [(u >> (bits * i)) & ((1 << bits) - 1) for i in range(32 // bits)]
    return np.stack(fields, axis=-1).reshape(words.shape[0], -1)[:, :length]


def dequantized64(weights: dict, t: dict) -> np.ndarray:
    """W [out, in] in float64 from one layer's compressed-tensors tensors `t` and its `weights` scheme."""
    scale = t["weight_scale"].astype(np.float64)
    if "weight_packed" in t:
        bits, (n, k) = weights["num_bits"], t["weight_shape"].tolist()
        half = 1 << (bits - 1)
        q = unpack_last_axis(t["weight_packed"], bits, k) - half
        zp = 0 if weights["symmetric"] else unpack_last_axis(t["weight_zero_point"].T, bits, n).T - half
        group = weights["group_size"] if weights["strategy"] == "group" else k
        cols = np.arange(k) // group
        zp = zp if np.isscalar(zp) else zp[:, cols]
        return (q - zp) * scale[:, cols]
    w = t["weight"].astype(np.float64)
    if weights["strategy"] == "block":
        bn, bk = weights["block_structure"]
        return w * np.repeat(np.repeat(scale, bn, axis=0), bk, axis=1)[: w.shape[0], : w.shape[1]]
    return w * scale.reshape(-1, 1) if scale.size > 1 else w * scale.item()


@functools.lru_cache(maxsize=None)
def hf_reference(name: str):
    """HF's model of the checkpoint (float32) with the exact dequantized weights (and fp8 inputs)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    directory = FIXTURES / name
    group = next(iter(json.loads((directory / "config.json").read_text())["quantization_config"]
                      ["config_groups"].values()))
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    st = SafetensorsFile(str(directory / "model.safetensors"))
    for prefix in (f"model.layers.0.{linear}" for linear in LINEARS):
        t = {n[len(prefix) + 1:]: st.get(n) for n in st.names() if n.startswith(prefix + ".")}
        w64 = dequantized64(group["weights"], t)
        layer = model.get_submodule(prefix)
        hf_bf16 = layer.weight.detach().numpy()
        np.testing.assert_array_equal(w64.astype(ml_dtypes.bfloat16).astype(np.float32), hf_bf16, err_msg=prefix)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w64.astype(np.float32)))
        if group.get("input_activations"):
            acts = group["input_activations"]
            group_size = acts["group_size"] if acts["strategy"] == "group" else None
            layer.register_forward_pre_hook(fp8_input_hook(acts["dynamic"], group_size, t.get("input_scale")))
    return model


def rounding_tie_tokens(name: str) -> list[int]:
    """Token ids whose first-layer input, under dynamic fp8 scales, has an element within 1e-6
    (relative) of an fp8 rounding midpoint (see the module NOTE); [] for static scales."""
    config = json.loads((FIXTURES / name / "config.json").read_text())
    acts = next(iter(config["quantization_config"]["config_groups"].values())).get("input_activations")
    if not acts or not acts["dynamic"]:
        return []
    st = SafetensorsFile(str(FIXTURES / name / "model.safetensors"))
    e = st.get("model.embed_tokens.weight").astype(np.float64)  # [V, H]
    x = e / np.sqrt((e * e).mean(axis=1, keepdims=True) + config["rms_norm_eps"])
    x = x * st.get("model.layers.0.input_layernorm.weight").astype(np.float64)
    group = acts["group_size"] if acts["strategy"] == "group" else x.shape[1]
    xg = np.abs(x).reshape(len(x), -1, group)
    v = xg * FP8_MAX / xg.max(axis=2, keepdims=True)  # |x| / scale
    spacing = 2.0 ** (np.floor(np.log2(np.maximum(v, 2.0 ** -6))) - 3)  # e4m3: 3 mantissa bits
    distance = np.abs((v / spacing) % 1.0 - 0.5) * spacing / np.maximum(v, 1e-30)
    return np.flatnonzero(distance.reshape(len(x), -1).min(axis=1) < 1e-6).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_generate_matches_hf_greedy(name):
    ties = rounding_tie_tokens(name)
    assert len(ties) < 40, ties  # most of the vocabulary stays in play
    vocab = json.loads((FIXTURES / name / "config.json").read_text())["vocab_size"]
    allowed = [t for t in range(vocab) if t not in ties]
    prompts = [[allowed[t % len(allowed)] for t in p] for p in PROMPTS]
    llm = LLM(str(FIXTURES / name), **ENGINE_ARGS)
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True,
                            allowed_token_ids=allowed if ties else None)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    assert got == greedy(hf_reference(name), prompts, GREEDY_TOKENS, ties)
    assert all(len(set(g)) > 4 for g in got), got  # not collapsed into a repeated token
