"""Bit packing of small unsigned integers into int32 words (numpy, host side).

`pack_words` puts element i of each run of 32 // bits elements along `axis` at bits
[bits*i, bits*(i+1)) of one word: the order GPTQ (qweight along input features, qzeros
along output features) and compressed-tensors (along the last axis; zero points along the
first) use. AWQ interleaves its eight nibbles: `AWQ_ORDER[i]` is the column in nibble i.
"""

from __future__ import annotations

import numpy as np

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i]


def _per_word(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return 32 // bits


def pack_words(values, bits: int, axis: int, order=None) -> np.ndarray:
    """Unsigned ints (each in [0, 2**bits)) -> i32 words along `axis` (length ceil(L / per_word)).

    order: element position -> nibble, e.g. AWQ_ORDER (default: sequential).
    """
    per = _per_word(bits)
    v = np.moveaxis(np.asarray(values).astype(np.int64), axis, -1)
    if v.size and (v.min() < 0 or v.max() >= 1 << bits):
        raise ValueError(f"values to pack must lie in [0, {1 << bits}), got [{v.min()}, {v.max()}]")
    v = np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, -v.shape[-1] % per)])
    v = v.reshape(*v.shape[:-1], -1, per).astype(np.uint32)  # [..., words, per]
    if order is not None:
        v = v[..., list(order)]  # slot i takes element order[i]
    shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
    words = np.bitwise_or.reduce(v << shifts, axis=-1).astype(np.uint32)
    return np.moveaxis(words.view(np.int32), -1, axis)


def unpack_words(words, bits: int, axis: int, length: int, order=None) -> np.ndarray:
    """Inverse of `pack_words`: i32 words -> unsigned ints (int32), `length` along `axis`."""
    per = _per_word(bits)
    w = np.moveaxis(np.ascontiguousarray(words, dtype=np.int32).view(np.uint32), axis, -1)
    if w.shape[-1] * per < length:
        raise ValueError(f"{w.shape[-1]} words of {per} values cannot hold {length} values")
    shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
    v = (w[..., None] >> shifts) & np.uint32((1 << bits) - 1)  # [..., words, per]: slot values
    if order is not None:
        v = v[..., np.argsort(order)]  # element j sits in slot argsort(order)[j]
    v = v.reshape(*w.shape[:-1], -1)[..., :length].astype(np.int32)
    return np.moveaxis(v, -1, axis)
