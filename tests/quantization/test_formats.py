"""Each checkpoint format, one layer at a time: packing follows the format's reference
implementation (GPTQModel / AutoGPTQ, AutoAWQ, compressed-tensors), unpacking returns the
original integers and scales, and the converted weight dequantizes to (q - zero) * scale."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from models.quantization import LinearScheme, QuantizationConfig, convert_linear
from models.quantization.awq import pack_awq, unpack_awq
from models.quantization.compressed_tensors import pack_compressed
from models.quantization.gptq import pack_gptq, unpack_gptq
from models.quantization.parse import gptq_scheme

RNG = np.random.default_rng(0)


def dequant64(q, zeros, scales, rows):
    return (q - zeros[rows]) * np.asarray(scales, np.float64)[rows]


# --------------------------------------------------------------------------- GPTQ


def test_gptq_word_layout_is_sequential_along_k_and_n():
    q = np.zeros((8, 8), np.int64)
    q[:, 0] = np.arange(1, 9)  # rows 0..7 of column 0
    zeros = np.arange(1, 9)[None, :]  # columns 0..7 of group 0
    v2 = pack_gptq(q, zeros, np.ones((1, 8)), bits=4, group_size=-1, version=2)
    assert v2["qweight"][0, 0].view(np.uint32) == 0x87654321
    assert v2["qzeros"][0, 0].view(np.uint32) == 0x87654321
    v1 = pack_gptq(q, zeros, np.ones((1, 8)), bits=4, group_size=-1, version=1)
    assert v1["qzeros"][0, 0].view(np.uint32) == 0x76543210  # v1 stores zero - 1
    q8 = np.zeros((32, 32), np.int64)
    q8[:4, 0] = [1, 2, 3, 4]  # rows 0..3 share a word at 8 bits
    q8 = pack_gptq(q8, np.full((1, 32), 128), np.ones((1, 32)), bits=8, group_size=-1, version=2)
    assert q8["qweight"][0, 0].view(np.uint32) == 0x04030201


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("sym,group_size,desc_act", [(True, 32, False), (False, 16, True),
                                                     (False, -1, False), (True, 24, True)])
def test_gptq_round_trip(bits, version, sym, group_size, desc_act):
    k, n = 96, 64
    groups = 1 if group_size == -1 else math.ceil(k / group_size)
    half = 1 << (bits - 1)
    q = RNG.integers(0, 1 << bits, (k, n))
    zeros = np.full((groups, n), half) if sym else RNG.integers(1, 1 << bits, (groups, n))
    scales = RNG.uniform(0.001, 0.01, (groups, n)).astype(np.float16)
    rows = np.arange(k) // (k if group_size == -1 else group_size)
    if desc_act:
        rows = RNG.permutation(rows)
    tensors = pack_gptq(q, zeros, scales, rows, bits=bits, group_size=group_size, version=version)
    scheme = gptq_scheme(bits, group_size, sym, desc_act, version)
    q2, zeros2, scales2, g_idx2 = unpack_gptq(tensors, scheme)
    assert np.array_equal(q2, q) and np.array_equal(zeros2, zeros) and np.array_equal(scales2, scales)
    assert np.array_equal(g_idx2, rows)
    weight = convert_linear(scheme, tensors)
    assert weight.layout.weight_format == f"int{bits}" and weight.layout.has_zeros == (not sym)
    assert weight.layout.has_g_idx == scheme.desc_act and weight.layout.scale_dtype == "float16"
    np.testing.assert_allclose(np.asarray(weight.dequantize(), np.float64),
                               dequant64(q, zeros, scales, rows), rtol=1e-6, atol=1e-8)
    if bits == 4:  # GPTQ's 4-bit words are the device layout's words
        assert np.array_equal(weight.arrays["qweight"], tensors["qweight"])


def test_gptq_errors():
    q = RNG.integers(0, 16, (32, 8))
    with pytest.raises(ValueError, match="cannot store a zero point of 0"):
        pack_gptq(q, np.zeros((1, 8), int), np.ones((1, 8)), bits=4, group_size=-1, version=1)
    asym = pack_gptq(q, RNG.integers(1, 16, (2, 8)), np.ones((2, 8)), bits=4, group_size=16, version=2)
    with pytest.raises(ValueError, match="sym=true but the qzeros are not all 8"):
        convert_linear(gptq_scheme(4, 16, True, False, 2), asym)
    shuffled = {**asym, "g_idx": RNG.permutation(asym["g_idx"])}
    with pytest.raises(ValueError, match="g_idx is not k // group_size, but desc_act is false"):
        convert_linear(gptq_scheme(4, 16, False, False, 2), shuffled)
    with pytest.raises(ValueError, match=r"missing \['g_idx'\]"):
        convert_linear(gptq_scheme(4, 16, False, True, 2), {k: v for k, v in asym.items() if k != "g_idx"})
    with pytest.raises(ValueError, match="scales have 2 groups; in_features 32 with group size 8 needs 4"):
        convert_linear(gptq_scheme(4, 8, False, False, 2), {k: v for k, v in asym.items() if k != "g_idx"})


# --------------------------------------------------------------------------- AWQ


def test_awq_word_layout_interleaves_columns():
    tensors = pack_awq(np.arange(8)[None, :], np.arange(8)[None, :], np.ones((1, 8)))
    assert tensors["qweight"][0, 0].view(np.uint32) == 0x75316420  # nibble i = column (0,2,4,6,1,3,5,7)[i]
    assert tensors["qzeros"].shape == (1, 1)


@pytest.mark.parametrize("group_size", [32, -1])
def test_awq_round_trip(group_size):
    k, n = 64, 48
    groups = 1 if group_size == -1 else k // group_size
    q, zeros = RNG.integers(0, 16, (k, n)), RNG.integers(0, 16, (groups, n))
    scales = RNG.uniform(0.001, 0.01, (groups, n)).astype(np.float16)
    tensors = pack_awq(q, zeros, scales)
    assert tensors["qweight"].shape == (k, n // 8)
    q2, zeros2, scales2 = unpack_awq(tensors)
    assert np.array_equal(q2, q) and np.array_equal(zeros2, zeros) and np.array_equal(scales2, scales)
    cfg = QuantizationConfig.from_hf_config({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}})
    weight = convert_linear(cfg.scheme_for("model.layers.0.mlp.up_proj"), tensors)
    rows = np.arange(k) // (k if group_size == -1 else group_size)
    np.testing.assert_allclose(np.asarray(weight.dequantize(), np.float64),
                               dequant64(q, zeros, scales, rows), rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- compressed-tensors


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 36])
def test_compressed_tensors_packing_matches_the_library(bits, k):
    """Our packer writes what compressed-tensors' own pack_to_int32 writes (odd K included)."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    half = 1 << (bits - 1)
    q, zp = RNG.integers(-half, half, (24, k)), RNG.integers(-half, half, (24, 3))
    ours = pack_compressed(q, np.ones((24, 3)), zp, bits=bits)
    theirs = pack_to_int32(torch.tensor(q, dtype=torch.int8), bits).numpy()
    assert np.array_equal(ours["weight_packed"], theirs)
    zp_theirs = pack_to_int32(torch.tensor(zp, dtype=torch.int8), bits, packed_dim=0).numpy()
    assert np.array_equal(ours["weight_zero_point"], zp_theirs)


def _ct_scheme(bits, strategy="group", group_size=None, symmetric=True, actorder=None, fmt="pack-quantized"):
    weights = {"num_bits": bits, "type": "int", "strategy": strategy, "group_size": group_size,
               "symmetric": symmetric, "actorder": actorder}
    cfg = QuantizationConfig.from_hf_config({"quantization_config": {
        "quant_method": "compressed-tensors", "format": fmt,
        "config_groups": {"g": {"targets": ["Linear"], "weights": weights}}}})
    return cfg.scheme_for("model.layers.0.mlp.up_proj")


@pytest.mark.parametrize("bits,strategy,group_size,symmetric,actorder", [
    (4, "group", 12, False, "group"), (4, "channel", None, True, None), (8, "group", 16, False, None),
    (8, "channel", None, False, None), (4, "group", 16, True, "weight"),
])
def test_compressed_tensors_round_trip(bits, strategy, group_size, symmetric, actorder):
    n, k = 40, 36  # K not a multiple of the 8 nibbles of a word
    groups = 1 if strategy == "channel" else math.ceil(k / group_size)
    half = 1 << (bits - 1)
    q = RNG.integers(-half, half, (n, k))
    scales = RNG.uniform(0.001, 0.01, (n, groups)).astype(ml_dtypes.bfloat16)
    zp = None if symmetric else RNG.integers(-half, half, (n, groups))
    rows = np.arange(k) // (group_size or k)
    g_idx = RNG.permutation(rows) if actorder == "group" else None
    tensors = pack_compressed(q, scales, zp, g_idx, bits=bits)
    weight = convert_linear(_ct_scheme(bits, strategy, group_size, symmetric, actorder), tensors)
    rows = rows if g_idx is None else g_idx
    zeros = np.zeros((n, groups)) if zp is None else zp
    expected = (q - zeros[:, rows]) * np.asarray(scales, np.float64)[:, rows]  # [N, K]
    assert weight.layout.scale_dtype == "bfloat16" and weight.layout.in_features == k
    np.testing.assert_allclose(np.asarray(weight.dequantize(), np.float64), expected.T, rtol=1e-6, atol=1e-8)


def test_compressed_tensors_int_quantized_and_unpacked_zero_points():
    n, k = 16, 32
    q = RNG.integers(-128, 128, (n, k))
    zp = RNG.integers(-128, 128, (n, 2)).astype(np.int8)  # older releases: unpacked int8
    scales = RNG.uniform(0.001, 0.01, (n, 2)).astype(np.float32)
    weight = convert_linear(_ct_scheme(8, "group", 16, False, fmt="int-quantized"),
                            {"weight": q.astype(np.int8), "weight_scale": scales, "weight_zero_point": zp})
    rows = np.arange(k) // 16
    expected = (q - zp.astype(np.int64)[:, rows]) * scales.astype(np.float64)[:, rows]
    np.testing.assert_allclose(np.asarray(weight.dequantize(), np.float64), expected.T, rtol=1e-6)


# --------------------------------------------------------------------------- fp8


@pytest.mark.parametrize("n,k,block", [(40, 72, (16, 32)), (256, 128, (128, 128))])
def test_hf_fp8_block_scales(n, k, block):
    """weight_scale_inv multiplies; partial blocks at the edges take their block's scale."""
    w = RNG.normal(0, 100, (n, k)).astype(ml_dtypes.float8_e4m3fn)
    scale_inv = RNG.uniform(1e-4, 1e-3, (math.ceil(n / block[0]), math.ceil(k / block[1]))).astype(np.float32)
    cfg = QuantizationConfig.from_hf_config({"quantization_config": {
        "quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": list(block)}})
    weight = convert_linear(cfg.scheme_for("model.layers.0.mlp.up_proj"),
                            {"weight": w, "weight_scale_inv": scale_inv})
    expected = w.astype(np.float64) * np.repeat(np.repeat(scale_inv, block[0], 0), block[1], 1)[:n, :k]
    np.testing.assert_allclose(np.asarray(weight.dequantize(), np.float64), expected.T, rtol=1e-6)
    assert weight.layout.activation == "fp8-group" and weight.layout.activation_group == block[1]


def test_static_fp8_needs_input_scale():
    cfg = QuantizationConfig.from_hf_config({"quantization_config": {
        "quant_method": "fp8", "activation_scheme": "static"}})
    scheme = cfg.scheme_for("model.layers.0.mlp.up_proj")
    w = RNG.normal(size=(8, 16)).astype(ml_dtypes.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"missing \['input_scale'\]"):
        convert_linear(scheme, {"weight": w, "weight_scale": np.float32([0.5])})
    weight = convert_linear(scheme, {"weight": w, "weight_scale": np.float32([0.5]),
                                     "input_scale": np.float32([0.25])})
    assert weight.arrays["input_scale"].tolist() == [0.25]


@pytest.mark.parametrize("method", ["int8", "fp8"])
def test_on_load_quantization_per_channel(method):
    w = RNG.normal(0, 0.05, (24, 40)).astype(np.float32)
    w[3] = 0.0  # an all-zero output channel must not divide by zero
    scheme = QuantizationConfig.from_hf_config({}, method).scheme_for("model.layers.0.mlp.up_proj")
    weight = convert_linear(scheme, {"weight": w})
    deq = np.asarray(weight.dequantize(), np.float64).T  # [N, K]
    amax = np.abs(w).max(axis=1, keepdims=True)
    if method == "int8":  # round to nearest: at most half a step (amax / 127) off
        assert np.all(np.abs(deq - w) <= amax / 127 / 2 + 1e-9)
    else:  # e4m3: 3 mantissa bits, at most 2^-4 relative (plus subnormals near zero)
        assert np.all(np.abs(deq - w) <= np.abs(w) * 2.0 ** -4 + amax / 448 * 2.0 ** -9 + 1e-12)
    assert np.all(deq[3] == 0) and weight.layout.scale_dtype == "float32"


def test_convert_linear_names_missing_and_unexpected_roles():
    scheme = LinearScheme("awq", 4, group_size=32, symmetric=False)
    with pytest.raises(ValueError, match=r"missing \['qzeros'\], unexpected \['bias'\]"):
        convert_linear(scheme, {"qweight": np.zeros((32, 1), np.int32), "scales": np.ones((1, 8)),
                                "bias": np.zeros(8)})
