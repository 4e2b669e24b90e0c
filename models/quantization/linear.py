"""The quantized linear layer: `quantized_linear` (a function of a `QuantizedWeight`) and
`QuantizedLinear` (the same as a Flax NNX module, for the models' parameter trees).

Backends: "pallas" (the dequantizing Pallas kernel; Triton on GPU, interpret mode
elsewhere), "reference" (jnp: dequantize W, one matmul; the CPU fast path), "auto"
(pallas on GPU, reference elsewhere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.quantization.weights import QuantizedWeight
from pallas_kernels.quant_layout import QuantLayout
from pallas_kernels.quant_matmul import quant_matmul, quant_matmul_reference

BACKENDS = ("auto", "pallas", "reference")


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "reference"
    return backend


def quantized_linear(x, weight: QuantizedWeight, bias=None, *, backend: str = "auto",
                     interpret=None, **tuning):
    """x [..., in_features] @ W (+ bias [out_features]) -> [..., out_features] in x's dtype.

    `tuning` (block_m, block_n, block_k, num_warps, num_stages) goes to the Pallas kernel.
    """
    layout = weight.layout
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"x's last dimension must be in_features ({layout.in_features}), got {x.shape}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layout.in_features)  # [tokens, K]
    arrays = dict(weight.arrays)
    if resolve_backend(backend) == "pallas":
        y = quant_matmul(x2, arrays, layout=layout, interpret=interpret, **tuning)
    else:
        if tuning:
            raise ValueError(f"tuning knobs {sorted(tuning)} apply to the pallas backend only")
        y = quant_matmul_reference(x2, arrays, layout=layout)
    if bias is not None:
        y = (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
    return y.reshape(*lead, layout.out_features)


class QuantizedLinear(nnx.Module):
    """A linear layer whose weight stays quantized: one `nnx.Param` per layout array
    (qweight, scales, zeros, g_idx, input_scale as the layout has them) and an optional
    float bias. Built abstractly (zeros), then filled by the loader by array name."""

    def __init__(self, layout: QuantLayout, *, use_bias: bool = False, bias_dtype=jnp.float32,
                 backend: str = "auto"):
        resolve_backend(backend)
        self.layout = layout
        self.backend = backend
        self.array_names = tuple(sorted(layout.param_specs()))
        for name, spec in layout.param_specs().items():
            setattr(self, name, nnx.Param(jnp.zeros(spec.shape, spec.dtype)))
        self.bias = nnx.Param(jnp.zeros((layout.out_features,), bias_dtype)) if use_bias else None

    @classmethod
    def from_weight(cls, weight: QuantizedWeight, bias=None, *, backend: str = "auto") -> "QuantizedLinear":
        """A layer holding `weight` (and `bias`, if given) on the default device."""
        layer = cls(weight.layout, use_bias=bias is not None,
                    bias_dtype=None if bias is None else jnp.asarray(bias).dtype, backend=backend)
        for name in layer.array_names:
            getattr(layer, name).set_value(jnp.asarray(weight.arrays[name]))
        if bias is not None:
            layer.bias.set_value(jnp.asarray(bias))
        return layer

    @property
    def weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.layout, {n: getattr(self, n)[...] for n in self.array_names})

    @property
    def param_bytes(self) -> int:
        """Device bytes of the layer's parameters (quantized arrays and bias)."""
        return param_bytes(nnx.state(self, nnx.Param))

    def __call__(self, x, **tuning):
        bias = None if self.bias is None else self.bias[...]
        return quantized_linear(x, self.weight, bias, backend=self.backend, **tuning)


def param_bytes(tree) -> int:
    """Bytes of every array leaf in a pytree (an nnx.State, a QuantizedWeight, a dict, ...)."""
    return sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
               for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "dtype"))
