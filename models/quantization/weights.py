"""`QuantizedWeight`: one linear layer's quantized weight, its arrays plus its static layout.

The arrays are exactly `layout.param_specs()` (layout documented in
pallas_kernels/quant_layout.py): host numpy arrays after conversion from a checkpoint,
device arrays after `to_device`. A pytree (the layout is static), so it passes through jit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from models.quantization.packing import pack_words
from pallas_kernels.quant_layout import QuantLayout, dequantize_reference

_ZERO_RANGES = {"int4": (-128, 127), "int8": (-(1 << 15), (1 << 15) - 1)}


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """W [in_features, out_features] as `layout` stores it; `arrays` keyed by param_specs names."""

    layout: QuantLayout
    arrays: Mapping[str, object]

    def __post_init__(self):
        self.layout.check_arrays(dict(self.arrays))

    @property
    def param_bytes(self) -> int:
        """Bytes of the arrays (what the weight occupies on its device)."""
        return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in self.arrays.values())

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The float W [in_features, out_features] (for tests and float fallbacks)."""
        a = self.arrays
        return dequantize_reference(jnp.asarray(a["qweight"]), jnp.asarray(a["scales"]),
                                    _maybe(a.get("zeros")), _maybe(a.get("g_idx")),
                                    layout=self.layout, dtype=dtype)

    def to_device(self, sharding_for: Callable[[str], jax.sharding.Sharding] | None = None
                  ) -> "QuantizedWeight":
        """A copy with every array on the default device, or on `sharding_for(array name)`."""
        placed = {name: jax.device_put(value, sharding_for(name) if sharding_for else None)
                  for name, value in self.arrays.items()}
        return QuantizedWeight(self.layout, placed)


def _maybe(array):
    return None if array is None else jnp.asarray(array)


def _flatten(weight: QuantizedWeight):
    names = tuple(sorted(weight.arrays))
    return [(jax.tree_util.DictKey(n), weight.arrays[n]) for n in names], (weight.layout, names)


def _unflatten(aux, leaves) -> QuantizedWeight:
    # NOTE: no validation here: jax rebuilds pytrees with placeholder leaves (tracers, None).
    weight = object.__new__(QuantizedWeight)
    object.__setattr__(weight, "layout", aux[0])
    object.__setattr__(weight, "arrays", dict(zip(aux[1], leaves)))
    return weight


jax.tree_util.register_pytree_with_keys(QuantizedWeight, _flatten, _unflatten)


def pack_centred(layout: QuantLayout, q) -> np.ndarray:
    """Centred ints [K, N] (int4: [-8, 7], int8: [-128, 127]) or fp8 values [K, N] -> qweight."""
    q = np.asarray(q)
    if layout.weight_format == "int4":
        return pack_words(q.astype(np.int64) + 8, 4, axis=0)  # i32[ceil(K/8), N]
    if layout.weight_format == "int8":
        return _checked_cast(q, np.int8, "int8 weights")
    return np.asarray(q, dtype=jnp.float8_e4m3fn)


def from_parts(layout: QuantLayout, qweight, scales, zeros=None, g_idx=None, input_scale=None
               ) -> QuantizedWeight:
    """Host arrays -> a validated `QuantizedWeight` of `layout`.

    qweight: already in the layout's form (see `pack_centred`); scales [Gk, Gn] (cast to
    layout.scale_dtype); zeros: centred zero points [Gk, Gn] or None; g_idx: int [K] or None;
    input_scale: the static activation scale or None.
    """
    arrays = {"qweight": np.asarray(qweight),
              "scales": np.asarray(scales).astype(jnp.dtype(layout.scale_dtype))}
    if zeros is not None:
        low, high = _ZERO_RANGES[layout.weight_format]
        dtype = layout.param_specs()["zeros"].dtype if layout.has_zeros else np.int8
        arrays["zeros"] = _checked_cast(np.asarray(zeros), dtype, "zero points", low, high)
    if g_idx is not None:
        g_idx = np.asarray(g_idx).astype(np.int64)
        if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= layout.num_groups_k):
            raise ValueError(f"g_idx values must lie in [0, {layout.num_groups_k}), got"
                             f" [{g_idx.min()}, {g_idx.max()}]")
        arrays["g_idx"] = g_idx.astype(np.int32)
    if input_scale is not None:
        arrays["input_scale"] = np.asarray(input_scale, np.float32).reshape(1)
    return QuantizedWeight(layout, arrays)


def from_centred(layout: QuantLayout, q, scales, zeros=None, g_idx=None, input_scale=None
                 ) -> QuantizedWeight:
    """Like `from_parts`, with the weight given as centred ints / fp8 values q [K, N]."""
    return from_parts(layout, pack_centred(layout, q), scales, zeros, g_idx, input_scale)


def _checked_cast(values, dtype, what: str, low=None, high=None):
    info = np.iinfo(dtype)
    low = info.min if low is None else low
    high = info.max if high is None else high
    values = np.asarray(values)
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(f"{what} must lie in [{low}, {high}], got [{values.min()}, {values.max()}]")
    return values.astype(dtype)
