"""The device layout of a quantized linear weight, its jnp dequantization, and fp8
activation quantization: what the quantized matmul kernel and its reference share.

A quantized weight stands for a float matrix W [K, N] (K = in_features, N = out_features,
`y = x @ W`) and is held on the device as up to five arrays:

  qweight   "int4": i32[ceil(K / 8), N]; nibble j (bits 4j..4j+3) of qweight[r, n] holds
                    row k = 8r + j as an unsigned value u in [0, 15]; q = u - 8.
            "int8": i8[K, N]; q = the stored value, in [-128, 127].
            "fp8":  float8_e4m3fn[K, N]; q = the stored value.
  scales    [ceil(K / group_k), ceil(N / group_n)] in `scale_dtype`.
  zeros     optional, same shape as scales, int8 (int4 weights) or int16 (int8 weights):
            the zero point in q's centred domain (absent = 0, i.e. symmetric).
  g_idx     optional i32[K]: the scale row of each weight row (GPTQ act-order); without it
            the scale row of k is k // group_k.
  input_scale  optional f32[1]: the static per-tensor activation scale ("fp8-static").

  W[k, n] = (q[k, n] - zeros[g(k), n // group_n]) * scales[g(k), n // group_n]

Per-channel scales are group_k = K, group_n = 1; per-tensor group_k = K, group_n = N;
group-wise int4 group_k = group size, group_n = 1; DeepSeek-style fp8 blocks group_k = 128,
group_n = 128. The integers are centred (q = unsigned - 2**(bits-1)) so that a symmetric
format needs no zero points at all.

`activation` selects how inputs are fed: "none" (weight-only: x stays in its float dtype
and W is dequantized inside the matmul) or fp8 W8A8 as vLLM runs it, x quantized to
float8_e4m3fn per token ("fp8-token"), per token and group of `activation_group` input
features ("fp8-group"), per tensor ("fp8-tensor"), all dynamic, or with the checkpoint's
static per-tensor scale ("fp8-static").
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

WEIGHT_FORMATS = ("int4", "int8", "fp8")
ACTIVATIONS = ("none", "fp8-token", "fp8-group", "fp8-tensor", "fp8-static")
SCALE_DTYPES = ("float32", "bfloat16", "float16")
INT4_PER_WORD = 8
FP8_MAX = float(jnp.finfo(jnp.float8_e4m3fn).max)  # 448
# vLLM's floor on dynamic fp8 scales (all-zero rows would otherwise divide by zero).
FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)

_QWEIGHT_DTYPES = {"int4": jnp.int32, "int8": jnp.int8, "fp8": jnp.float8_e4m3fn}
_ZERO_DTYPES = {"int4": jnp.int8, "int8": jnp.int16}
_QWEIGHT_BITS = {"int4": 4, "int8": 8, "fp8": 8}


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class QuantLayout:
    """Static description of one quantized weight W [in_features, out_features] (see module doc)."""

    weight_format: str  # one of WEIGHT_FORMATS
    in_features: int  # K
    out_features: int  # N
    group_k: int  # weight rows sharing a scale row (in_features = one group: per channel)
    group_n: int = 1  # weight columns sharing a scale column (1: per output channel)
    has_zeros: bool = False  # asymmetric: zero points stored (int formats only)
    has_g_idx: bool = False  # explicit scale row per weight row (GPTQ desc_act)
    scale_dtype: str = "float32"  # one of SCALE_DTYPES
    activation: str = "none"  # one of ACTIVATIONS
    activation_group: int | None = None  # input features per activation scale ("fp8-group")

    def __post_init__(self):
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {self.weight_format!r}")
        for name in ("in_features", "out_features", "group_k", "group_n"):
            _positive_int(name, getattr(self, name))
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {self.scale_dtype!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.weight_format == "fp8" and self.has_zeros:
            raise ValueError("fp8 weights are symmetric: has_zeros must be False")
        if self.activation != "none" and self.weight_format != "fp8":
            raise ValueError(f"activation {self.activation!r} needs fp8 weights, got {self.weight_format}")
        if (self.activation == "fp8-group") != (self.activation_group is not None):
            raise ValueError("activation_group is required by, and only by, activation 'fp8-group'")
        if self.activation_group is not None:
            _positive_int("activation_group", self.activation_group)

    @property
    def bits(self) -> int:
        return _QWEIGHT_BITS[self.weight_format]

    @property
    def num_groups_k(self) -> int:
        return math.ceil(self.in_features / self.group_k)

    @property
    def num_groups_n(self) -> int:
        return math.ceil(self.out_features / self.group_n)

    @property
    def qweight_shape(self) -> tuple[int, int]:
        if self.weight_format == "int4":
            return (math.ceil(self.in_features / INT4_PER_WORD), self.out_features)
        return (self.in_features, self.out_features)

    def param_specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Every device array of this layout, by name (qweight, scales, zeros, g_idx, input_scale)."""
        scales = (self.num_groups_k, self.num_groups_n)
        specs = {"qweight": jax.ShapeDtypeStruct(self.qweight_shape, _QWEIGHT_DTYPES[self.weight_format]),
                 "scales": jax.ShapeDtypeStruct(scales, jnp.dtype(self.scale_dtype))}
        if self.has_zeros:
            specs["zeros"] = jax.ShapeDtypeStruct(scales, _ZERO_DTYPES[self.weight_format])
        if self.has_g_idx:
            specs["g_idx"] = jax.ShapeDtypeStruct((self.in_features,), jnp.int32)
        if self.activation == "fp8-static":
            specs["input_scale"] = jax.ShapeDtypeStruct((1,), jnp.float32)
        return specs

    def param_bytes(self) -> int:
        """Device bytes of this layout's arrays."""
        return sum(math.prod(s.shape) * s.dtype.itemsize for s in self.param_specs().values())

    def check_arrays(self, arrays: dict) -> None:
        """ValueError naming any array that is missing, unexpected, misshapen or of the wrong dtype."""
        specs = self.param_specs()
        given = {name for name, value in arrays.items() if value is not None}
        if given != set(specs):
            raise ValueError(f"quantized weight arrays {sorted(given)} do not match the layout's"
                             f" {sorted(specs)} ({self})")
        for name, spec in specs.items():
            value = arrays[name]
            if tuple(value.shape) != spec.shape or jnp.dtype(value.dtype) != spec.dtype:
                raise ValueError(f"{name} must be {spec.dtype}{list(spec.shape)}, got "
                                 f"{jnp.dtype(value.dtype)}{list(value.shape)}")


# ----------------------------------------------------------------------------- reference


def unpack_int4_rows(qweight, num_rows: int):
    """i32[ceil(K/8), N] -> the centred int4 values i32[K, N] (in [-8, 7])."""
    shifts = jnp.arange(INT4_PER_WORD, dtype=jnp.int32) * 4  # [8]
    nibbles = (qweight[:, None, :] >> shifts[None, :, None]) & 0xF  # [K/8, 8, N]
    return nibbles.reshape(-1, qweight.shape[1])[:num_rows] - 8


def centred_weights(qweight, layout: QuantLayout):
    """q as float32 [K, N] (before zero points and scales)."""
    if layout.weight_format == "int4":
        return unpack_int4_rows(qweight, layout.in_features).astype(jnp.float32)
    return qweight.astype(jnp.float32)


def expand_groups(values, layout: QuantLayout, g_idx=None):
    """Per-group values [Gk, Gn] -> per-element [K, N] through g_idx / group_k and group_n."""
    if g_idx is None:
        g_idx = jnp.arange(layout.in_features, dtype=jnp.int32) // layout.group_k
    cols = jnp.arange(layout.out_features, dtype=jnp.int32) // layout.group_n
    return values[g_idx][:, cols]


def dequantize_reference(qweight, scales, zeros=None, g_idx=None, *, layout: QuantLayout,
                         dtype=jnp.float32):
    """The float W [K, N] a quantized weight stands for (float32 math, cast to `dtype`)."""
    q = centred_weights(qweight, layout)  # f32[K, N]
    if zeros is not None:
        q = q - expand_groups(zeros.astype(jnp.float32), layout, g_idx)
    w = q * expand_groups(scales.astype(jnp.float32), layout, g_idx)
    return w.astype(dtype)


def activation_scale_columns(layout: QuantLayout) -> int:
    """Columns of the activation scales x_scale [M, columns] of an fp8 W8A8 layout."""
    if layout.activation == "fp8-group":
        return math.ceil(layout.in_features / layout.activation_group)
    return 1


def quantize_activations_fp8(x, layout: QuantLayout, input_scale=None):
    """x [M, K] float -> (x_q float8_e4m3fn[M, K], x_scale f32[M, C]) per `layout.activation`.

    Dynamic scales are amax / 448 (at least FP8_MIN_SCALE) over a token ("fp8-token"), a
    token's group of `activation_group` features ("fp8-group") or all of x ("fp8-tensor");
    "fp8-static" uses `input_scale` f32[1]. x_q = clip(x / scale, +-448), rounded to nearest.
    """
    m, k = x.shape
    xf = x.astype(jnp.float32)
    if layout.activation == "fp8-static":
        if input_scale is None:
            raise ValueError("activation 'fp8-static' needs input_scale")
        scale = jnp.broadcast_to(input_scale.astype(jnp.float32).reshape(1, 1), (m, 1))
    elif layout.activation == "fp8-tensor":
        scale = jnp.broadcast_to(jnp.max(jnp.abs(xf)).reshape(1, 1) / FP8_MAX, (m, 1))
    elif layout.activation == "fp8-token":
        scale = jnp.max(jnp.abs(xf), axis=1, keepdims=True) / FP8_MAX
    elif layout.activation == "fp8-group":
        cols = activation_scale_columns(layout)
        padded = jnp.pad(xf, ((0, 0), (0, cols * layout.activation_group - k)))
        scale = jnp.max(jnp.abs(padded.reshape(m, cols, -1)), axis=2) / FP8_MAX
    else:
        raise ValueError(f"layout activation {layout.activation!r} does not quantize activations")
    if layout.activation != "fp8-static":
        scale = jnp.maximum(scale, FP8_MIN_SCALE)
    x_q = jnp.clip(xf / _per_feature(scale, layout, k), -FP8_MAX, FP8_MAX)
    return x_q.astype(jnp.float8_e4m3fn), scale


def _per_feature(x_scale, layout: QuantLayout, k: int):
    """Activation scales [M, C] -> [M, K] (each scale repeated over its group of features)."""
    group = layout.activation_group if layout.activation == "fp8-group" else k
    return jnp.repeat(x_scale, group, axis=1)[:, :k]


def dequantize_activations(x_q, x_scale, layout: QuantLayout):
    """Inverse of `quantize_activations_fp8`: f32[M, K] = x_q * its scale."""
    return x_q.astype(jnp.float32) * _per_feature(x_scale, layout, x_q.shape[1])


def matmul_f32(a, b):
    """f32 a [M, K] @ b [K, N] at full float32 precision."""
    return jnp.dot(a, b, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
