"""AWQ checkpoints (AutoAWQ, GEMM version), one linear layer at a time.

Tensors (K = in_features, N = out_features, G = K / group_size):
  qweight  i32[K, N / 8]  unsigned 4-bit q packed along N, interleaved: nibble i of word c
                          holds column 8c + AWQ_ORDER[i], AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
  qzeros   i32[G, N / 8]  unsigned zero points, same packing (stored as they are, no offset)
  scales   f16[G, N]
  W[k, n] = (q[k, n] - zero[k // group_size, n]) * scales[k // group_size, n]
"""

from __future__ import annotations

import numpy as np

from models.quantization.config import LinearScheme
from models.quantization.packing import AWQ_ORDER, pack_words, unpack_words
from models.quantization.weights import QuantizedWeight, from_centred

REQUIRED = ("qweight", "qzeros", "scales")
OPTIONAL = ()


def pack_awq(q, zeros, scales) -> dict[str, np.ndarray]:
    """Known unsigned ints q [K, N], zeros [G, N] (both in [0, 16)), scales [G, N] -> AWQ tensors."""
    q = np.asarray(q)
    if q.shape[1] % 8:
        raise ValueError(f"awq packs 8 columns per word: out_features ({q.shape[1]}) must be a multiple of 8")
    return {"qweight": pack_words(q, 4, axis=1, order=AWQ_ORDER),
            "qzeros": pack_words(zeros, 4, axis=1, order=AWQ_ORDER),
            "scales": np.asarray(scales, np.float16)}


def unpack_awq(tensors):
    """AWQ tensors -> (unsigned q [K, N], unsigned zero points [G, N], scales [G, N])."""
    scales = np.asarray(tensors["scales"])
    out_features = scales.shape[1]
    q = unpack_words(tensors["qweight"], 4, axis=1, length=out_features, order=AWQ_ORDER)
    zeros = unpack_words(tensors["qzeros"], 4, axis=1, length=out_features, order=AWQ_ORDER)
    return q, zeros, scales


def awq_weight(tensors, scheme: LinearScheme, scale_dtype: str | None = None) -> QuantizedWeight:
    """An AWQ layer -> `QuantizedWeight` (repacked along K, de-interleaved)."""
    q, zeros, scales = unpack_awq(tensors)
    layout = scheme.layout(q.shape[0], q.shape[1], scale_dtype or str(scales.dtype))
    return from_centred(layout, q.astype(np.int64) - 8, scales, zeros.astype(np.int64) - 8)
