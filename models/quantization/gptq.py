"""GPTQ checkpoints (AutoGPTQ / GPTQModel), one linear layer at a time.

Tensors (K = in_features, N = out_features, G = scale groups, b = bits, 32 / b per word):
  qweight  i32[K * b / 32, N]  unsigned q packed along K (element k % (32/b) at bits b*(k % (32/b)))
  qzeros   i32[G, N * b / 32]  unsigned zero points packed along N; format v1 ("gptq") stores
                               zero - 1, v2 ("gptq_v2") the zero itself
  scales   f16[G, N]
  g_idx    i32[K]              scale group of each input feature (act order permutes it)
  W[k, n] = (q[k, n] - zero[g_idx[k], n]) * scales[g_idx[k], n]
Symmetric checkpoints store zero = 2**(b-1) everywhere (v1: 2**(b-1) - 1); v1 zero points are
unpacked element by element and then incremented (as vLLM's kernels do), so a v1 zero of 0,
which the format cannot hold, is refused when packing.
"""

from __future__ import annotations

import math

import numpy as np

from models.quantization.config import LinearScheme
from models.quantization.packing import pack_words, unpack_words
from models.quantization.weights import QuantizedWeight, from_parts, pack_centred

REQUIRED = ("qweight", "qzeros", "scales")
OPTIONAL = ("g_idx",)


def trivial_g_idx(in_features: int, group_size: int) -> np.ndarray:
    return (np.arange(in_features) // group_size).astype(np.int32)


def pack_gptq(q, zeros, scales, g_idx=None, *, bits: int, group_size: int, version: int = 1
              ) -> dict[str, np.ndarray]:
    """Known integers -> a GPTQ layer's tensors, as GPTQModel / AutoGPTQ write them.

    q: unsigned ints [K, N] in [0, 2**bits); zeros: unsigned zero points [G, N]; scales [G, N];
    g_idx: [K] (default k // group_size; group_size -1 = all in group 0).
    """
    q, zeros = np.asarray(q), np.asarray(zeros)
    stored = zeros - (1 if version == 1 else 0)
    if stored.size and stored.min() < 0:
        raise ValueError("gptq v1 cannot store a zero point of 0 (it stores zero - 1)")
    if g_idx is None:
        g_idx = trivial_g_idx(q.shape[0], q.shape[0] if group_size == -1 else group_size)
    if q.shape[0] * bits % 32 or q.shape[1] * bits % 32:
        raise ValueError(f"gptq packs 32 / {bits} values per word: in_features ({q.shape[0]}) and"
                         f" out_features ({q.shape[1]}) must be multiples of {32 // bits}")
    return {"qweight": pack_words(q, bits, axis=0), "qzeros": pack_words(stored, bits, axis=1),
            "scales": np.asarray(scales, np.float16), "g_idx": np.asarray(g_idx, np.int32)}


def unpack_gptq(tensors, scheme: LinearScheme):
    """A GPTQ layer's tensors -> (unsigned q [K, N], zero points [G, N] (v1 offset undone),
    scales [G, N], g_idx [K] or None)."""
    qweight = np.asarray(tensors["qweight"])
    q = unpack_words(qweight, scheme.bits, axis=0, length=qweight.shape[0] * 32 // scheme.bits)
    return (q, _zero_points(tensors, scheme, qweight.shape[1]), np.asarray(tensors["scales"]),
            None if tensors.get("g_idx") is None else np.asarray(tensors["g_idx"]))


def _zero_points(tensors, scheme: LinearScheme, out_features: int) -> np.ndarray:
    return unpack_words(tensors["qzeros"], scheme.bits, axis=1, length=out_features) + scheme.zero_offset


def gptq_weight(tensors, scheme: LinearScheme, scale_dtype: str | None = None) -> QuantizedWeight:
    """A GPTQ layer -> `QuantizedWeight` (GPTQ's 4-bit qweight already is the device layout's
    words and passes through; 8-bit weights are re-centred to int8)."""
    qweight, scales = np.asarray(tensors["qweight"], np.int32), np.asarray(tensors["scales"])
    in_features, out_features = qweight.shape[0] * 32 // scheme.bits, qweight.shape[1]
    zeros = _zero_points(tensors, scheme, out_features)
    g_idx = None if tensors.get("g_idx") is None else np.asarray(tensors["g_idx"])
    layout = scheme.layout(in_features, out_features, scale_dtype or str(scales.dtype))
    half = 1 << (scheme.bits - 1)
    centred_zeros = zeros.astype(np.int64) - half
    if scheme.symmetric:
        if np.any(centred_zeros != 0):
            raise ValueError(f"gptq sym=true but the qzeros are not all {half}; the checkpoint is"
                             " asymmetric (set sym=false)")
        centred_zeros = None
    group = in_features if scheme.strategy == "channel" else scheme.group_size
    if scales.shape[0] != math.ceil(in_features / group):
        raise ValueError(f"gptq scales have {scales.shape[0]} groups; in_features {in_features}"
                         f" with group size {group} needs {math.ceil(in_features / group)}")
    if not scheme.desc_act:
        if g_idx is not None and not np.array_equal(g_idx, trivial_g_idx(in_features, group)):
            raise ValueError("gptq g_idx is not k // group_size, but desc_act is false")
        g_idx = None
    elif g_idx is None:
        raise ValueError("gptq desc_act=true needs the layer's g_idx tensor")
    if scheme.bits == 8:
        q = unpack_words(qweight, 8, axis=0, length=in_features).astype(np.int64) - half
        qweight = pack_centred(layout, q)
    return from_parts(layout, qweight, scales, centred_zeros, g_idx)
