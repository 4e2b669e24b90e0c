"""quantized_linear / QuantizedLinear: shapes, bias, backends, jit, abstract construction,
param_bytes, and the QuantizedWeight pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.quantization import QuantizationConfig, QuantizedLinear, QuantizedWeight, convert_linear, param_bytes, quantized_linear
from pallas_kernels.quant_layout import QuantLayout
from tests.quantization.quant_cases import expected_matmul, random_case

LAYOUT = QuantLayout("int4", 48, 24, group_k=16, has_zeros=True, has_g_idx=True, scale_dtype="bfloat16")


def make_weight(layout=LAYOUT, seed=0):
    case = random_case(layout, seed)
    return case, QuantizedWeight(layout, case.arrays)


@pytest.mark.parametrize("backend", ["reference", "pallas"])
def test_linear_matches_float64_with_leading_dims_and_bias(backend):
    case, weight = make_weight()
    bias = np.random.default_rng(1).normal(size=24).astype(np.float32)
    x = np.random.default_rng(2).normal(size=(2, 3, 48)).astype(np.float32)
    y = quantized_linear(jnp.asarray(x), weight.to_device(), jnp.asarray(bias), backend=backend, interpret=True)
    y64, bound = expected_matmul(x.reshape(6, 48), case)
    assert y.shape == (2, 3, 24)
    err = np.abs(np.asarray(y).reshape(6, 24) - (y64 + bias))
    assert np.all(err <= 1e-5 * bound + 1e-5)


def test_module_jit_abstract_construction_and_param_bytes():
    case, weight = make_weight()
    bias = jnp.arange(24, dtype=jnp.float32)
    layer = QuantizedLinear.from_weight(weight, bias, backend="reference")
    x = jnp.asarray(np.random.default_rng(3).normal(size=(5, 48)), jnp.float32)
    expected = quantized_linear(x, weight.to_device(), bias, backend="reference")
    graphdef, state = nnx.split(layer)
    jitted = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(expected))
    assert layer.param_bytes == LAYOUT.param_bytes() + 24 * 4 == param_bytes(state)
    # what a loader does: build abstractly, then fill each array by name
    abstract = nnx.eval_shape(lambda: QuantizedLinear(LAYOUT, use_bias=True))
    shapes = {path[-1]: (v.shape, v.dtype) for path, v in nnx.to_flat_state(nnx.state(abstract))}
    assert shapes == {**{n: (s.shape, s.dtype) for n, s in LAYOUT.param_specs().items()},
                      "bias": ((24,), jnp.float32)}


def test_int4_layer_bytes_are_an_eighth_of_float32_plus_scales():
    layout = QuantLayout("int4", 4096, 4096, group_k=128, scale_dtype="bfloat16")
    assert layout.param_bytes() == 4096 * 4096 // 2 + 32 * 4096 * 2
    asym = QuantLayout("int4", 4096, 4096, group_k=128, has_zeros=True, scale_dtype="bfloat16")
    assert asym.param_bytes() == layout.param_bytes() + 32 * 4096  # int8 zero points


def test_quantized_weight_is_a_pytree_and_validates():
    _, weight = make_weight()
    leaves, treedef = jax.tree_util.tree_flatten(weight)
    assert len(leaves) == 4 and jax.tree_util.tree_unflatten(treedef, leaves).layout == LAYOUT
    through_jit = jax.jit(lambda w: w)(weight.to_device())
    assert isinstance(through_jit, QuantizedWeight) and through_jit.param_bytes == weight.param_bytes
    with pytest.raises(ValueError, match="do not match the layout"):
        QuantizedWeight(LAYOUT, {k: v for k, v in weight.arrays.items() if k != "g_idx"})


def test_on_load_int8_layer_tracks_the_float_layer():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.05, (32, 64)).astype(np.float32)  # HF [out, in]
    weight = convert_linear(QuantizationConfig.from_hf_config({}, "int8").scheme_for("x"), {"weight": w})
    x = rng.normal(size=(4, 64)).astype(np.float32)
    y = np.asarray(quantized_linear(jnp.asarray(x), weight.to_device()))
    np.testing.assert_allclose(y, x @ w.T, atol=0.02 * np.abs(x @ w.T).max())


def test_bad_calls_are_clear_errors():
    _, weight = make_weight()
    with pytest.raises(ValueError, match="backend must be one of"):
        quantized_linear(jnp.zeros((1, 48)), weight, backend="cuda")
    with pytest.raises(ValueError, match=r"last dimension must be in_features \(48\)"):
        quantized_linear(jnp.zeros((1, 47)), weight)
    with pytest.raises(ValueError, match="apply to the pallas backend only"):
        quantized_linear(jnp.zeros((1, 48)), weight, backend="reference", block_k=32)
