"""Random quantized weights for tests, built from known integers with numpy, independently
of the package's packers, plus float64 references of W and of y = x @ W."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from pallas_kernels.quant_layout import QuantLayout

FP8 = ml_dtypes.float8_e4m3fn
FP8_MAX = 448.0


@dataclasses.dataclass
class Case:
    layout: QuantLayout
    arrays: dict  # device-layout numpy arrays, keyed as layout.param_specs()
    w64: np.ndarray  # float64 [K, N]: the weight they stand for


def pack_int4_rows(u: np.ndarray) -> np.ndarray:
    """Unsigned nibbles u [K, N] -> i32[ceil(K/8), N], row k in nibble k % 8 (a plain loop)."""
    k, n = u.shape
    words = np.zeros((-(-k // 8), n), np.uint64)
    for row in range(k):
        words[row // 8] |= u[row].astype(np.uint64) << np.uint64(4 * (row % 8))
    return words.astype(np.uint32).view(np.int32)


def random_case(layout: QuantLayout, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    k, n = layout.in_features, layout.out_features
    gk, gn = layout.num_groups_k, layout.num_groups_n
    scales = rng.uniform(0.01, 0.1, (gk, gn)).astype(jnp.dtype(layout.scale_dtype))
    arrays = {"scales": scales}
    if layout.weight_format == "int4":
        q = rng.integers(-8, 8, (k, n))
        arrays["qweight"] = pack_int4_rows(q + 8)
    elif layout.weight_format == "int8":
        q = rng.integers(-128, 128, (k, n))
        arrays["qweight"] = q.astype(np.int8)
    else:
        arrays["qweight"] = rng.normal(0, 2, (k, n)).astype(FP8)
        q = arrays["qweight"].astype(np.float64)
    zeros = np.zeros((gk, gn))
    if layout.has_zeros:
        bound = 8 if layout.weight_format == "int4" else 128
        zeros = rng.integers(-bound, bound, (gk, gn))
        arrays["zeros"] = zeros.astype(np.int8 if layout.weight_format == "int4" else np.int16)
    rows = np.arange(k) // layout.group_k
    if layout.has_g_idx:
        rows = rng.permutation(rows)  # act order: groups scattered over the input features
        arrays["g_idx"] = rows.astype(np.int32)
    if layout.activation == "fp8-static":
        arrays["input_scale"] = np.array([0.02], np.float32)
    cols = np.arange(n) // layout.group_n
    s64 = scales.astype(np.float64)[rows][:, cols]
    w64 = (q - zeros[rows][:, cols]) * s64
    return Case(layout, arrays, w64)


def fp8_activations64(x: np.ndarray, layout: QuantLayout, input_scale=None) -> np.ndarray:
    """x as the W8A8 matmul sees it, dequantized (float64): vLLM's dynamic fp8 quantization
    replayed in numpy float32 (amax / 448, floor 1 / (448 * 512), clip, round to nearest)."""
    x = x.astype(np.float32)
    m, k = x.shape
    if layout.activation == "fp8-static":
        scale = np.full((m, k), np.float32(input_scale[0]))
    else:
        group = {"fp8-token": k, "fp8-tensor": m * k, "fp8-group": layout.activation_group}[layout.activation]
        flat = x.reshape(-1) if layout.activation == "fp8-tensor" else None
        scale = np.empty((m, k), np.float32)
        for r in range(m):
            for start in range(0, k, min(group, k)):
                part = flat if flat is not None else x[r, start:start + group]
                amax = np.float32(np.abs(part).max()) / np.float32(FP8_MAX)
                scale[r, start:start + group] = max(amax, np.float32(1.0 / (FP8_MAX * 512.0)))
    x_q = np.clip(x / scale, -FP8_MAX, FP8_MAX).astype(FP8)
    return x_q.astype(np.float64) * scale.astype(np.float64)


def expected_matmul(x: np.ndarray, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(y64 = x @ W in float64, the bound |x| @ |W| the error is measured against)."""
    if case.layout.activation != "none":
        x64 = fp8_activations64(x, case.layout, case.arrays.get("input_scale"))
    else:
        x64 = np.asarray(x, np.float64)
    return x64 @ case.w64, np.abs(x64) @ np.abs(case.w64)
