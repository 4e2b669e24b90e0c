"""The dequantizing matmul (pallas_kernels/quant_matmul.py): the Pallas kernel (interpret
mode here, compiled on a GPU) and its jnp reference against float64 numpy, built from known
integers; CUDA lowering of every layout at engine shapes; argument validation.

Tolerances are relative to |x| @ |W| (per element): float32 runs IEEE dots (1e-5); bfloat16
and float16 round W to x's dtype before the dot and round the output (2^-8 and 2^-11
relative: 1e-2, 2e-3); fp8 W8A8 replays the activation quantization exactly (float32 math),
so its error is float32 summation (1e-5, 1e-2 for bfloat16 outputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.quant_layout import QuantLayout, dequantize_reference
from pallas_kernels.quant_matmul import quant_matmul, quant_matmul_reference
from tests.kernels.kernel_cases import MODES, interpret_flag
from tests.quantization.quant_cases import expected_matmul, random_case

TOL = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}

# (id, layout kwargs, x dtype, M): odd K (partial int4 words, partial tiles), odd N, GQA-free.
LAYOUTS = [
    ("int4-sym-g32-bf16", dict(weight_format="int4", in_features=72, out_features=40, group_k=32,
                               scale_dtype="bfloat16"), "bfloat16", 5),
    ("int4-asym-g16-actorder-f32", dict(weight_format="int4", in_features=64, out_features=24,
                                        group_k=16, has_zeros=True, has_g_idx=True), "float32", 17),
    ("int4-asym-channel-f16-k40", dict(weight_format="int4", in_features=40, out_features=72,
                                       group_k=40, has_zeros=True, scale_dtype="float16"), "float16", 1),
    ("int8-asym-g32-f32", dict(weight_format="int8", in_features=96, out_features=40, group_k=32,
                               has_zeros=True), "float32", 3),
    ("int8-sym-channel-bf16", dict(weight_format="int8", in_features=48, out_features=24,
                                   group_k=48, scale_dtype="bfloat16"), "bfloat16", 20),
    ("fp8-block-weight-only-bf16", dict(weight_format="fp8", in_features=80, out_features=40,
                                        group_k=32, group_n=16), "bfloat16", 4),
    ("fp8-w8a8-token-channel-bf16", dict(weight_format="fp8", in_features=64, out_features=40,
                                         group_k=64, activation="fp8-token", scale_dtype="bfloat16"),
     "bfloat16", 6),
    ("fp8-w8a8-group32-block-f32", dict(weight_format="fp8", in_features=96, out_features=40,
                                        group_k=32, group_n=16, activation="fp8-group",
                                        activation_group=32), "float32", 3),
    ("fp8-w8a8-static-tensor-f32", dict(weight_format="fp8", in_features=48, out_features=24,
                                        group_k=48, group_n=24, activation="fp8-static"), "float32", 2),
    ("fp8-w8a8-dynamic-tensor-f16", dict(weight_format="fp8", in_features=48, out_features=24,
                                         group_k=48, group_n=24, activation="fp8-tensor"), "float16", 2),
]


def _check(y, x, case, dtype):
    y64, bound = expected_matmul(np.asarray(x.astype(jnp.float32)), case)
    assert y.shape == y64.shape and y.dtype == jnp.dtype(dtype)
    err = np.abs(np.asarray(y.astype(jnp.float32), np.float64) - y64)
    assert np.all(err <= TOL[dtype] * bound + 1e-6), float((err / (bound + 1e-12)).max())


def _inputs(kwargs, dtype, m, seed=0):
    case = random_case(QuantLayout(**kwargs), seed)
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(m, kwargs["in_features"])), dtype)
    return case, x, {k: jnp.asarray(v) for k, v in case.arrays.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,kwargs,dtype,m", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_kernel_matches_float64(name, kwargs, dtype, m, mode):
    case, x, arrays = _inputs(kwargs, dtype, m)
    y = quant_matmul(x, arrays, layout=case.layout, interpret=interpret_flag(mode))
    _check(y, x, case, dtype)


@pytest.mark.parametrize("name,kwargs,dtype,m", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_reference_matches_float64(name, kwargs, dtype, m):
    case, x, arrays = _inputs(kwargs, dtype, m, seed=3)
    _check(quant_matmul_reference(x, arrays, layout=case.layout), x, case, dtype)
    w = dequantize_reference(arrays["qweight"], arrays["scales"], arrays.get("zeros"),
                             arrays.get("g_idx"), layout=case.layout)
    np.testing.assert_allclose(np.asarray(w, np.float64), case.w64, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tuning", [dict(block_m=32, block_n=16, block_k=16, num_warps=8),
                                    dict(block_m=16, block_n=128, block_k=128, num_stages=3)])
def test_tuning_knobs_keep_results(tuning, mode):
    _, kwargs, dtype, _ = LAYOUTS[1]  # int4, zeros, act order: the most index arithmetic
    case, x, arrays = _inputs(kwargs, dtype, 33, seed=5)
    y = quant_matmul(x, arrays, layout=case.layout, interpret=interpret_flag(mode), **tuning)
    _check(y, x, case, dtype)


def test_output_is_fully_written_and_no_rows_is_empty():
    """Rows and columns past the tiles' edges are stored (no stale values), none beyond."""
    _, kwargs, dtype, _ = LAYOUTS[0]
    case, x, arrays = _inputs(kwargs, dtype, 19, seed=7)
    y = quant_matmul(x, arrays, layout=case.layout, interpret=True, block_m=16, block_n=16)
    assert np.isfinite(np.asarray(y, np.float32)).all()
    _check(y, x, case, dtype)
    empty = quant_matmul(x[:0], arrays, layout=case.layout, interpret=True)
    assert empty.shape == (0, kwargs["out_features"])


# --------------------------------------------------------------------------- CUDA lowering

ENGINE_LAYOUTS = [
    dict(weight_format="int4", group_k=128, scale_dtype="bfloat16"),
    dict(weight_format="int4", group_k=128, has_zeros=True, has_g_idx=True, scale_dtype="float16"),
    dict(weight_format="int4", group_k=4096, has_zeros=True, scale_dtype="bfloat16"),
    dict(weight_format="int8", group_k=4096, scale_dtype="bfloat16"),
    dict(weight_format="int8", group_k=128, has_zeros=True, scale_dtype="float16"),
    dict(weight_format="fp8", group_k=128, group_n=128),
    dict(weight_format="fp8", group_k=4096, activation="fp8-token", scale_dtype="bfloat16"),
    dict(weight_format="fp8", group_k=128, group_n=128, activation="fp8-group", activation_group=128),
    dict(weight_format="fp8", group_k=4096, group_n=14336, activation="fp8-static"),
]


@pytest.mark.parametrize("kwargs", ENGINE_LAYOUTS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_engine_shapes_lower_for_cuda(kwargs):
    """llama-3.1-8b's gate_proj (4096 x 14336) at decode, small and large prefill batches."""
    layout = QuantLayout(in_features=4096, out_features=14336, **kwargs)
    for tokens, dtype in ((1, jnp.bfloat16), (16, jnp.float16), (2048, jnp.bfloat16)):
        x = jax.ShapeDtypeStruct((tokens, 4096), dtype)

        def call(x, arrays):
            return quant_matmul(x, arrays, layout=layout, interpret=False)

        text = jax.jit(call).trace(x, layout.param_specs()).lower(lowering_platforms=("cuda",)).as_text()
        assert "__gpu$xla.gpu.triton" in text


# --------------------------------------------------------------------------- validation


def test_bad_arguments_are_clear_errors():
    _, kwargs, dtype, _ = LAYOUTS[1]
    case, x, arrays = _inputs(kwargs, dtype, 4)
    layout = case.layout
    with pytest.raises(ValueError, match=r"x must be \[tokens, 64\]"):
        quant_matmul(x[:, :32], arrays, layout=layout, interpret=True)
    with pytest.raises(ValueError, match="x dtype int32 is not supported"):
        quant_matmul(x.astype(jnp.int32), arrays, layout=layout, interpret=True)
    with pytest.raises(ValueError, match="do not match the layout"):
        quant_matmul(x, {k: v for k, v in arrays.items() if k != "zeros"}, layout=layout, interpret=True)
    with pytest.raises(ValueError, match=r"qweight must be int32\[8, 24\]"):
        quant_matmul(x, {**arrays, "qweight": arrays["qweight"].astype(jnp.int8)}, layout=layout,
                     interpret=True)
    with pytest.raises(ValueError, match="block_n must be a power of two >= 16"):
        quant_matmul(x, arrays, layout=layout, interpret=True, block_n=24)
    with pytest.raises(ValueError, match="layout must be a QuantLayout"):
        quant_matmul(x, arrays, layout="int4", interpret=True)
    w8a8 = QuantLayout("fp8", 96, 16, group_k=48, activation="fp8-token")
    with pytest.raises(ValueError, match=r"block_k 32 must divide the fp8 scale groups \[48\]"):
        quant_matmul(jnp.zeros((2, 96)), random_case(w8a8).arrays, layout=w8a8, block_k=32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_format="int3", in_features=8, out_features=8, group_k=8), "weight_format must be one of"),
    (dict(weight_format="int4", in_features=0, out_features=8, group_k=8), "in_features must be an int >= 1"),
    (dict(weight_format="fp8", in_features=8, out_features=8, group_k=8, has_zeros=True), "symmetric"),
    (dict(weight_format="int4", in_features=8, out_features=8, group_k=8, activation="fp8-token"),
     "needs fp8 weights"),
    (dict(weight_format="fp8", in_features=8, out_features=8, group_k=8, activation="fp8-group"),
     "activation_group is required"),
    (dict(weight_format="int8", in_features=8, out_features=8, group_k=8, scale_dtype="float64"),
     "scale_dtype must be one of"),
])
def test_layout_validates_itself(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantLayout(**kwargs)
