"""Fused quantized layers (q|k|v, gate|up, per-head-grouped qkv) split into our separate
projections, after conversion: a `QuantizedWeight` W [K, N] keeps every output column's
values in its own column of qweight (and of scales / zeros when they are per column), so a
part is a selection of columns, whatever the checkpoint's packing was.

Which columns each part takes comes from the family's weight-map `Transform` itself
(`output_columns` runs it on a tensor of column indices), so every fused layout a float
checkpoint can be split in (plain concatenation, Conv1D, grouped q/k/v) splits quantized too.
Scales shared by a block of columns (fp8 blocks) split only at block boundaries, and a
per-tensor scale is shared by every part; anything else is a clear error.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.quantization.weights import QuantizedWeight, from_parts
from models.weights import IDENTITY, TRANSPOSE, GroupedQKV, Split, Transform
from pallas_kernels.quant_layout import QuantLayout

# Transforms that only place output columns (no values change): what a quantized layer can go through.
COLUMN_TRANSFORMS = (type(IDENTITY), type(TRANSPOSE), Split, GroupedQKV)


def output_columns(transform: Transform, in_features: int, widths: Sequence[int]
                   ) -> tuple[int, list[np.ndarray]]:
    """(axis of the output features in the checkpoint's tensor, the fused tensor's output
    column indices each part takes) for a weight filling parts `[in_features, widths[i]]`."""
    if not isinstance(transform, COLUMN_TRANSFORMS):
        raise ValueError(f"a quantized layer cannot go through the {type(transform).__name__} transform"
                         " (it changes values, not only their places)")
    total = sum(widths)
    probe = total + 1  # an input size no output size equals: tells the two axes apart
    shape = tuple(transform.hf_shape([(probe, n) for n in widths]))
    if sorted(shape) != sorted((total, probe)):
        raise ValueError(f"unexpected fused weight shape {shape} for parts {list(widths)}")
    out_axis = shape.index(total)
    index = np.arange(total).reshape((total, 1) if out_axis == 0 else (1, total))
    parts = transform.to_ours(np.repeat(index, probe, axis=1 - out_axis), [(probe, n) for n in widths])
    columns = [np.asarray(p)[0].astype(np.int64) for p in parts]  # each part [probe, n]: every row alike
    if sorted(np.concatenate(columns).tolist()) != list(range(total)):
        raise AssertionError(f"{type(transform).__name__} does not partition the {total} output columns")
    return out_axis, columns


def select_columns(weight: QuantizedWeight, columns: np.ndarray, layout: QuantLayout, name: str = "layer"
                   ) -> QuantizedWeight:
    """The output columns `columns` of `weight` as a weight of `layout` (its part's layout)."""
    full = weight.layout
    a = {k: np.asarray(v) for k, v in weight.arrays.items()}
    if full.num_groups_n == 1 and layout.num_groups_n == 1:  # one scale column: shared
        scale_cols = np.zeros(1, np.int64)
    elif full.group_n == 1:
        scale_cols = columns
    else:
        blocks = columns // full.group_n
        aligned = np.all(columns % full.group_n == np.arange(len(columns)) % full.group_n)
        if not aligned or layout.group_n != full.group_n or np.any(blocks != blocks[::full.group_n].repeat(
                full.group_n)[:len(columns)]):
            raise ValueError(f"{name}: the fused weight's scale blocks of {full.group_n} output rows do not"
                             " fall on its parts' boundaries; it cannot be split")
        scale_cols = blocks[::full.group_n]
    return from_parts(layout, a["qweight"][:, columns], a["scales"][:, scale_cols],
                      None if "zeros" not in a else a["zeros"][:, scale_cols], a.get("g_idx"),
                      a.get("input_scale"))
