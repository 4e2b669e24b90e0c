"""compressed-tensors checkpoints (llm-compressor), one linear layer at a time.

pack-quantized (int4 / int8 weights, K = in_features, N = out_features, b = bits):
  weight_packed      i32[N, ceil(K * b / 32)]  unsigned u = q + 2**(b-1), packed along K
                                              (element k % (32/b) at bits b*(k % (32/b)))
  weight_scale       [N, G] (group), [N, 1] (channel) or [1] (tensor), the model's dtype
  weight_zero_point  asymmetric only: i32[ceil(N * b / 32), G], u = zp + 2**(b-1) packed along N
                     (older releases: int8 [N, G] unpacked)
  weight_shape       i64[2] = [N, K]
  weight_g_idx       i32[K], activation ordering "group" only
  W[n, k] = (q[n, k] - zp[n, g(k)]) * scale[n, g(k)]      (torch's [out, in] orientation)
int-quantized: `weight` int8 [N, K] holds q itself. float-quantized is in fp8.py.
"""

from __future__ import annotations

import math

import numpy as np

from models.quantization.config import LinearScheme
from models.quantization.packing import pack_words, unpack_words
from models.quantization.weights import QuantizedWeight, from_centred, from_parts

PACKED_REQUIRED = ("weight_packed", "weight_scale", "weight_shape")
INT_REQUIRED = ("weight", "weight_scale")
OPTIONAL = ("weight_g_idx",)


def pack_compressed(q, scales, zero_points=None, g_idx=None, *, bits: int) -> dict[str, np.ndarray]:
    """Known signed ints q [N, K] (in [-2**(b-1), 2**(b-1))), scales [N, G], zero points [N, G]
    -> pack-quantized tensors, as compressed-tensors writes them."""
    q = np.asarray(q)
    half = 1 << (bits - 1)
    tensors = {"weight_packed": pack_words(q.astype(np.int64) + half, bits, axis=1),
               "weight_scale": np.asarray(scales), "weight_shape": np.asarray(q.shape, np.int64)}
    if zero_points is not None:
        tensors["weight_zero_point"] = pack_words(np.asarray(zero_points).astype(np.int64) + half, bits, axis=0)
    if g_idx is not None:
        tensors["weight_g_idx"] = np.asarray(g_idx, np.int32)
    return tensors


def _to_kn(scale_like, out_features: int) -> np.ndarray:
    """[N, G] / [N, 1] / [1] / [] (torch orientation) -> [G, Gn] (ours)."""
    a = np.asarray(scale_like)
    if a.ndim < 2:
        return a.reshape(1, 1)
    if a.shape[0] != out_features:
        raise ValueError(f"scale / zero-point tensor {list(a.shape)} must have {out_features} rows")
    return np.ascontiguousarray(a.T)


def _zero_points(tensors, scheme: LinearScheme, out_features: int):
    zp = tensors.get("weight_zero_point")
    if scheme.symmetric:
        return None
    if zp is None:
        raise ValueError("asymmetric compressed-tensors weights need weight_zero_point")
    zp = np.asarray(zp)
    if zp.dtype == np.int32 and zp.shape[0] == math.ceil(out_features * scheme.bits / 32) \
            and scheme.strategy in ("group", "channel"):
        zp = unpack_words(zp, scheme.bits, axis=0, length=out_features) - (1 << (scheme.bits - 1))
    return _to_kn(zp, out_features)


def compressed_weight(tensors, scheme: LinearScheme, scale_dtype: str | None = None) -> QuantizedWeight:
    """A pack-quantized or int-quantized layer -> `QuantizedWeight`."""
    scales = np.asarray(tensors["weight_scale"])
    half = 1 << (scheme.bits - 1)
    if scheme.format == "ct-pack":
        out_features, in_features = (int(v) for v in np.asarray(tensors["weight_shape"]))
        packed = np.asarray(tensors["weight_packed"], np.int32)
        if packed.shape != (out_features, math.ceil(in_features * scheme.bits / 32)):
            raise ValueError(f"weight_packed {list(packed.shape)} does not hold weight_shape"
                             f" [{out_features}, {in_features}] at {scheme.bits} bits")
        q = None if scheme.bits == 4 else \
            unpack_words(packed, scheme.bits, axis=1, length=in_features).astype(np.int64) - half
    else:
        q = np.asarray(tensors["weight"]).astype(np.int64)  # [N, K], signed
        out_features, in_features = q.shape
    layout = scheme.layout(in_features, out_features, scale_dtype or str(scales.dtype))
    g_idx = tensors.get("weight_g_idx") if scheme.desc_act else None
    if scheme.desc_act and g_idx is None:
        raise ValueError("compressed-tensors actorder 'group' needs weight_g_idx")
    zeros = _zero_points(tensors, scheme, out_features)
    scales = _to_kn(scales, out_features)
    if q is None:  # NOTE: int4 words along K of each output row are our words, transposed
        return from_parts(layout, np.ascontiguousarray(packed.T), scales, zeros, g_idx)
    return from_centred(layout, q.T, scales, zeros, g_idx)
