"""Checkpoints written by llm-compressor (fixtures/llmc, made by fixtures/make_llmc_checkpoints.py):
every tensor is accounted for, every quantized layer dequantizes bit for bit to what HF
transformers (with compressed-tensors) decompresses on CPU, and the quantized matmul
reproduces HF's layer outputs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from models.quantization import QuantizationConfig, checkpoint_tensor_names, convert_linear, quantized_linear
from models.safetensors_io import SafetensorsFile
from tests.quantization.quant_cases import fp8_activations64

FIXTURES = Path(__file__).parent / "fixtures" / "llmc"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_all_schemes_are_present():
    assert NAMES == ["fp8-block", "fp8-dynamic", "fp8-static", "w4a16-g16-asym", "w4a16-g32-sym",
                     "w4a16-gptq", "w8a16-channel", "w8a16-g32-asym"]


def load(name):
    config = json.loads((FIXTURES / name / "config.json").read_text())
    return config, QuantizationConfig.from_hf_config(config), SafetensorsFile(str(FIXTURES / name / "model.safetensors"))


def convert_all(name):
    """{layer prefix: QuantizedWeight}, and the checkpoint tensor names they used."""
    config, qcfg, st = load(name)
    weights, used = {}, set()
    for layer in range(config["num_hidden_layers"]):
        for linear in LINEARS:
            prefix = f"model.layers.{layer}.{linear}"
            scheme = qcfg.scheme_for(prefix)
            required, optional = checkpoint_tensor_names(scheme, prefix)
            present = {r: n for r, n in optional.items() if n in st.names()}
            tensors = {r: st.get(n) for r, n in {**required, **present}.items()}
            weights[prefix] = convert_linear(scheme, tensors)
            used |= set(required.values()) | set(present.values())
    return weights, used, st


@functools.lru_cache(maxsize=None)
def hf_decompressed(name):
    """HF transformers' own decompression of the checkpoint (compressed-tensors, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(FIXTURES / name,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_every_tensor_is_used_and_dequantizes_like_hf(name):
    weights, used, st = convert_all(name)
    floats = {n for n in st.names() if n.startswith("model.embed") or "norm" in n or n == "lm_head.weight"}
    assert used | floats == set(st.names()) and not used & floats
    hf = hf_decompressed(name)
    for prefix, weight in weights.items():
        ours = np.asarray(weight.dequantize(jnp.bfloat16).astype(jnp.float32))  # [K, N]
        np.testing.assert_array_equal(ours, hf[prefix + ".weight"].T, err_msg=prefix)


@pytest.mark.parametrize("name", NAMES)
def test_quantized_layers_reproduce_hf_outputs(name):
    """Weight-only layers, in bfloat16 (these checkpoints' dtype), match HF's decompressed
    layer to bfloat16's output rounding (1e-2 of |x| @ |W|). fp8 W8A8 layers, in float32,
    match the float64 replay of vLLM's dynamic / static activation quantization on the
    dequantized weight (1e-5), and differ from the unquantized-activation product."""
    weights, _, _ = convert_all(name)
    hf = hf_decompressed(name)
    rng = np.random.default_rng(0)
    for prefix, weight in weights.items():
        x = rng.normal(size=(3, weight.layout.in_features))
        device_weight = weight.to_device()
        if weight.layout.activation == "none":
            x = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
            w = hf[prefix + ".weight"].T.astype(np.float64)
            y = quantized_linear(jnp.asarray(x, jnp.bfloat16), device_weight, backend="reference")
            tol, x64 = 1e-2, x
        else:
            x = x.astype(np.float32)
            w = np.asarray(weight.dequantize(), np.float64)  # == HF's weights before bf16 rounding
            y = quantized_linear(jnp.asarray(x), device_weight, backend="reference")
            tol, x64 = 1e-5, fp8_activations64(x, weight.layout, weight.arrays.get("input_scale"))
            unquantized = np.abs(np.asarray(y, np.float64) - x.astype(np.float64) @ w)
            assert unquantized.max() > 1e-3 * (np.abs(x) @ np.abs(w)).max(), prefix
        err = np.abs(np.asarray(y.astype(jnp.float32), np.float64) - x64 @ w)
        assert np.all(err <= tol * (np.abs(x64) @ np.abs(w)) + 1e-6), prefix
