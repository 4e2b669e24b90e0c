"""fp8 (float8_e4m3fn) weights, one linear layer at a time, and on-load quantization.

compressed-tensors float-quantized (llm-compressor FP8, FP8_DYNAMIC, FP8_BLOCK):
  weight        f8[N, K]
  weight_scale  [N, 1] (channel), [1] (tensor) or [ceil(N / bn), ceil(K / bk)] (block)
  input_scale   [1], static activation scales only
HF fine-grained fp8 (Qwen3 / DeepSeek FP8): weight f8[N, K] and
  weight_scale_inv f32[ceil(N / 128), ceil(K / 128)] (multiplied, despite the name), or
  per-tensor weight_scale (+ input_scale when static).
  W[n, k] = weight[n, k] * scale[n // bn, k // bk]
On load (`quantization="int8" | "fp8"`): a float `weight` [N, K] is quantized symmetrically
per output channel: scale = amax / 127 (int8) or amax / 448 (fp8).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from models.quantization.config import LinearScheme
from models.quantization.weights import QuantizedWeight, from_centred
from pallas_kernels.quant_layout import FP8_MAX, FP8_MIN_SCALE

CT_REQUIRED = ("weight", "weight_scale")
CT_OPTIONAL = ("input_scale",)
HF_BLOCK_REQUIRED = ("weight", "weight_scale_inv")
ON_LOAD_REQUIRED = ("weight",)


def _scales_kn(scale, scheme: LinearScheme, out_features: int) -> np.ndarray:
    scale = np.asarray(scale)
    if scheme.strategy == "tensor":
        if scale.size != 1:
            raise ValueError(f"a per-tensor weight scale has one value, got shape {list(scale.shape)}")
        return scale.reshape(1, 1)
    if scheme.strategy == "channel":
        if scale.shape not in ((out_features, 1), (out_features,)):
            raise ValueError(f"per-channel weight_scale must be [{out_features}, 1], got {list(scale.shape)}")
        return scale.reshape(1, out_features)
    return np.ascontiguousarray(scale.T)  # block: [N / bn, K / bk] -> [K / bk, N / bn]


def fp8_weight(tensors, scheme: LinearScheme, scale_dtype: str | None = None) -> QuantizedWeight:
    """A compressed-tensors float-quantized or HF fp8 layer -> `QuantizedWeight`."""
    weight = np.asarray(tensors["weight"])
    if weight.dtype != jnp.float8_e4m3fn:
        raise ValueError(f"fp8 weight must be float8_e4m3fn, got {weight.dtype}")
    out_features, in_features = weight.shape
    scale_name = "weight_scale_inv" if scheme.strategy == "block" and scheme.format == "hf-fp8" \
        else "weight_scale"
    scale = np.asarray(tensors[scale_name])
    layout = scheme.layout(in_features, out_features, scale_dtype or str(scale.dtype))
    static = layout.activation == "fp8-static"
    if static and tensors.get("input_scale") is None:
        raise ValueError("static fp8 activations need the layer's input_scale")
    return from_centred(layout, weight.T, _scales_kn(scale, scheme, out_features),
                        input_scale=tensors.get("input_scale") if static else None)


def quantize_on_load(tensors, scheme: LinearScheme, scale_dtype: str | None = None) -> QuantizedWeight:
    """A float `weight` [N, K] -> int8 (W8A16) or fp8 (W8A8) per output channel, float32 scales."""
    w = np.asarray(tensors["weight"], np.float32).T  # [K, N]
    layout = scheme.layout(w.shape[0], w.shape[1], scale_dtype or "float32")
    amax = np.abs(w).max(axis=0, keepdims=True)  # [1, N]
    if scheme.format == "on-load-int8":
        scale = np.maximum(amax / 127.0, np.finfo(np.float32).tiny)
        return from_centred(layout, np.clip(np.rint(w / scale), -127, 127).astype(np.int64), scale)
    scale = np.maximum(amax / FP8_MAX, FP8_MIN_SCALE)
    return from_centred(layout, np.clip(w / scale, -FP8_MAX, FP8_MAX).astype(jnp.float8_e4m3fn), scale)
