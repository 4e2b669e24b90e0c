"""The quantized linear layer: `quantized_linear` (a function of a `QuantizedWeight`) and
`QuantizedLinear` (the same as a Flax NNX module, for the models' parameter trees).

Backends: "pallas" (the dequantizing Pallas kernel; Triton on GPU, interpret mode
elsewhere), "pallas_interpret" (the kernel in interpret mode, anywhere), "reference" (jnp:
dequantize W, one matmul; the CPU fast path), "auto" (pallas on GPU, reference elsewhere).

Tensor parallelism (`parallel`, models/quantization/tensor_parallel.py): a column- or
row-parallel layer runs under `shard_map`, each device multiplying by its own slice of the
quantized arrays (a row-parallel layer then sums the partial products), so the kernel never
sees a sharded array; a replicated layer is a plain call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import PartitionSpec as P

from models.quantization.tensor_parallel import ParallelLinear
from models.quantization.weights import QuantizedWeight
from pallas_kernels.quant_layout import QuantLayout
from pallas_kernels.quant_matmul import quant_matmul, quant_matmul_reference

BACKENDS = ("auto", "pallas", "pallas_interpret", "reference")


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "reference"
    return backend


def backend_for_attention(attention_backend: str) -> str:
    """The quantized matmul's backend for an engine running `attention_backend` (resolved):
    the Pallas kernel beside the Pallas attention kernels, the jnp path beside the reference."""
    return {"pallas": "pallas", "pallas_interpret": "pallas_interpret"}.get(attention_backend, "reference")


def _matmul(x2, arrays, layout: QuantLayout, backend: str, interpret, tuning):
    """x2 [tokens, K] @ W -> [tokens, N] in x2's dtype, on one device's arrays."""
    backend = resolve_backend(backend)
    if backend == "pallas_interpret":
        backend, interpret = "pallas", True
    if backend == "pallas":
        return quant_matmul(x2, arrays, layout=layout, interpret=interpret, **tuning)
    if tuning:
        raise ValueError(f"tuning knobs {sorted(tuning)} apply to the pallas backend only")
    return quant_matmul_reference(x2, arrays, layout=layout)


def _add_bias(y, bias):
    return y if bias is None else (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(y.dtype)


def quantized_linear(x, weight: QuantizedWeight, bias=None, *, backend: str = "auto",
                     interpret=None, parallel: ParallelLinear | None = None, **tuning):
    """x [..., in_features] @ W (+ bias [out_features]) -> [..., out_features] in x's dtype.

    `parallel`: the layer's tensor-parallel placement (None: one device, or let XLA place it).
    `tuning` (block_m, block_n, block_k, num_warps, num_stages) goes to the Pallas kernel.
    """
    layout = weight.layout
    resolve_backend(backend)
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"x's last dimension must be in_features ({layout.in_features}), got {x.shape}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, layout.in_features)  # [tokens, K]
    arrays = dict(weight.arrays)
    if parallel is None or parallel.size == 1:
        y = _add_bias(_matmul(x2, arrays, layout, backend, interpret, tuning), bias)
    else:
        y = _sharded_matmul(x2, arrays, bias, layout, parallel, backend, interpret, tuning)
    return y.reshape(*lead, layout.out_features)


def _sharded_matmul(x2, arrays, bias, layout: QuantLayout, parallel: ParallelLinear, backend, interpret, tuning):
    """`_matmul` under shard_map: column-parallel -> y [tokens, N] split on N; row-parallel ->
    partial products summed over the axis (bias added once, after the sum)."""
    from models.sharding import shard_map  # late: models.sharding imports the model registry

    local = parallel.local_layout(layout)
    ax, column = parallel.axis, parallel.kind == "column"

    def local_matmul(x2, arrays, *maybe_bias):  # this device's slices
        y = _matmul(x2, arrays, local, backend, interpret, tuning)
        if not column:
            y = jax.lax.psum(y, ax)
        return _add_bias(y, maybe_bias[0] if maybe_bias else None)

    in_specs = (P() if column else P(None, ax), parallel.array_specs(layout))
    args = (x2, arrays)
    if bias is not None:
        in_specs, args = in_specs + (P(ax) if column else P(),), args + (bias,)
    out_spec = P(None, ax) if column else P()
    return shard_map(local_matmul, parallel.mesh, in_specs=in_specs, out_specs=out_spec)(*args)


class QuantizedLinear(nnx.Module):
    """A linear layer whose weight stays quantized: one `nnx.Param` per layout array
    (qweight, scales, zeros, g_idx, input_scale as the layout has them) and an optional
    float bias. Built abstractly (zeros), then filled by the loader by array name."""

    def __init__(self, layout: QuantLayout, *, use_bias: bool = False, bias_dtype=jnp.float32,
                 backend: str = "auto", parallel: ParallelLinear | None = None):
        resolve_backend(backend)
        if parallel is not None:
            parallel.local_layout(layout)  # ValueError now if the layer cannot be split
        self.layout = layout
        self.backend = backend
        self.parallel = parallel
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
        return quantized_linear(x, self.weight, bias, backend=self.backend, parallel=self.parallel, **tuning)


def param_bytes(tree) -> int:
    """Bytes of every array leaf in a pytree (an nnx.State, a QuantizedWeight, a dict, ...)."""
    return sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
               for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "dtype"))
