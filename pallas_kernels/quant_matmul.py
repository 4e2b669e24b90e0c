"""y = x @ W with W quantized (int4 / int8 / fp8, layout in quant_layout.py), dequantized
inside the matmul.

The grid is (row tiles of x, column tiles of W); each program walks K in tiles of `block_k`
and accumulates in float32. Weight-only layouts load a tile of packed weights, unpack and
dequantize it in registers ((q - zero) * scale, scales gathered per row through g_idx or
k // group_k) and feed it to the dot in x's dtype. fp8 W8A8 layouts quantize x to fp8 first
(jnp, per token / token group / tensor) and run an fp8 x fp8 dot per tile, scaling the tile's
partial product by its activation and weight scales (so a K tile must lie inside one scale
group of each).
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import (
    MIN_DOT_DIM, SUPPORTED_DTYPES, check_tile, compiler_params, next_pow2, resolve_interpret)
from pallas_kernels._tile import store_index
from pallas_kernels._compat import dot, load, pl, store
from pallas_kernels.quant_layout import (
    INT4_PER_WORD, QuantLayout, dequantize_activations,
    dequantize_reference, matmul_f32, quantize_activations_fp8)

_DEFAULT_BLOCK_N = 64
_DEFAULT_BLOCK_K = 64
_MAX_BLOCK_M = 64


def _zero(dtype):
    # NOTE: a Python 0 lowers as an i32 splat, which Triton cannot cast to fp8; 0.0 can be.
    return 0.0 if jnp.issubdtype(dtype, jnp.floating) else 0


def quant_matmul_kernel(
    x_ref,  # [M, K]: x's float dtype (weight-only) or float8_e4m3fn (W8A8)
    qweight_ref,  # i32[ceil(K / 8), N] (int4) | i8[K, N] (int8) | f8[K, N] (fp8)
    scales_ref,  # [Gk, Gn]
    *refs,  # zeros_ref [Gk, Gn] (has_zeros), g_idx_ref i32[K] (has_g_idx),
    #         x_scale_ref f32[M, C] (W8A8), then o_ref [M, N]
    layout: QuantLayout,
    block_m: int,
    block_n: int,
    block_k: int,
):
    refs = list(refs)
    zeros_ref = refs.pop(0) if layout.has_zeros else None
    g_idx_ref = refs.pop(0) if layout.has_g_idx else None
    x_scale_ref = refs.pop(0) if layout.activation != "none" else None
    (o_ref,) = refs
    num_rows, k_total = x_ref.shape
    n_total = layout.out_features

    rows = pl.program_id(0) * block_m + jnp.arange(block_m, dtype=jnp.int32)  # i32[bm]
    cols = pl.program_id(1) * block_n + jnp.arange(block_n, dtype=jnp.int32)  # i32[bn]
    row_ok, col_ok = rows < num_rows, cols < n_total
    rows_in, cols_in = jnp.minimum(rows, num_rows - 1), jnp.minimum(cols, n_total - 1)
    scale_cols = cols_in // layout.group_n  # i32[bn]
    w8a8 = x_scale_ref is not None
    precision = lax.Precision.HIGHEST if x_ref.dtype == jnp.float32 else None

    def body(tile, acc):  # acc f32[bm, bn]
        k_start = tile * block_k
        ks = k_start + jnp.arange(block_k, dtype=jnp.int32)  # i32[bk]
        k_ok = ks < k_total
        ks_in = jnp.minimum(ks, k_total - 1)
        x = load(x_ref.at[rows_in[:, None], ks_in[None, :]], mask=row_ok[:, None] & k_ok[None, :],
                 other=_zero(x_ref.dtype))  # [bm, bk]
        w_ok = k_ok[:, None] & col_ok[None, :]  # [bk, bn]
        if layout.weight_format == "int4":
            words = load(qweight_ref.at[(ks_in // INT4_PER_WORD)[:, None], cols_in[None, :]],
                         mask=w_ok, other=0)  # i32[bk, bn]
            q = ((words >> ((ks_in % INT4_PER_WORD) * 4)[:, None]) & 0xF) - 8
        else:
            q = load(qweight_ref.at[ks_in[:, None], cols_in[None, :]], mask=w_ok,
                     other=_zero(qweight_ref.dtype))
        if w8a8:  # NOTE: the tile lies inside one weight and one activation scale group
            w_scale = load(scales_ref.at[k_start // layout.group_k, scale_cols])  # [bn]
            x_group = k_start // (layout.activation_group or k_total)
            x_scale = load(x_scale_ref.at[rows_in, x_group])  # f32[bm]
            partial = dot(x, q)  # f32[bm, bn]: fp8 x fp8
            return acc + partial * x_scale[:, None] * w_scale.astype(jnp.float32)[None, :]
        if g_idx_ref is not None:
            groups = load(g_idx_ref.at[ks_in])  # i32[bk]
        else:
            groups = ks_in // layout.group_k
        index = (groups[:, None], scale_cols[None, :])
        w = q.astype(jnp.float32)  # [bk, bn]
        if zeros_ref is not None:
            w = w - load(zeros_ref.at[index]).astype(jnp.float32)
        w = w * load(scales_ref.at[index]).astype(jnp.float32)
        return acc + dot(x, w.astype(x.dtype), precision=precision)

    num_tiles = pl.cdiv(k_total, block_k)
    acc = lax.fori_loop(0, num_tiles, body, jnp.zeros((block_m, block_n), jnp.float32))
    out_rows = store_index(rows, row_ok, num_rows)
    out_cols = store_index(cols, col_ok, n_total)
    store(o_ref.at[out_rows[:, None], out_cols[None, :]], acc.astype(o_ref.dtype),
          mask=row_ok[:, None] & col_ok[None, :])


def _quant_matmul_call(x, operands, *, layout: QuantLayout, out_dtype, block_m, block_n, block_k,
                       num_warps, num_stages, interpret):
    """pallas_call over grid (cdiv(M, block_m), cdiv(N, block_n)); whole-array refs."""
    num_rows = x.shape[0]
    kernel = functools.partial(quant_matmul_kernel, layout=layout, block_m=block_m,
                               block_n=block_n, block_k=block_k)
    return pl.pallas_call(
        kernel,
        grid=(pl.cdiv(num_rows, block_m), pl.cdiv(layout.out_features, block_n)),
        out_shape=jax.ShapeDtypeStruct((num_rows, layout.out_features), out_dtype),
        interpret=interpret,
        compiler_params=compiler_params(num_warps, num_stages),
        name=f"quant_matmul_{layout.weight_format}_bm{block_m}_bn{block_n}_bk{block_k}",
    )(x, *operands)


def _validate(x, arrays: Mapping, layout: QuantLayout) -> None:
    if not isinstance(layout, QuantLayout):
        raise ValueError(f"layout must be a QuantLayout, got {type(layout).__name__}")
    if x.ndim != 2 or x.shape[1] != layout.in_features:
        raise ValueError(f"x must be [tokens, {layout.in_features}] (in_features), got shape {x.shape}")
    if jnp.dtype(x.dtype) not in SUPPORTED_DTYPES:
        raise ValueError(f"x dtype {x.dtype} is not supported (float32, bfloat16, float16)")
    layout.check_arrays(dict(arrays))


def w8a8_block_k(layout: QuantLayout, block_k: int | None) -> int:
    """A K tile inside one weight and one activation scale group (fp8 W8A8), >= 16."""
    groups = [g for g in (layout.group_k, layout.activation_group)
              if g is not None and g < layout.in_features]
    candidates = [block_k] if block_k is not None else [128, 64, 32, MIN_DOT_DIM]
    for bk in candidates:
        if all(g % bk == 0 for g in groups):
            return bk
    raise ValueError(f"block_k {block_k if block_k is not None else '(auto)'} must divide the fp8 "
                     f"scale groups {groups} (and be a power of two >= {MIN_DOT_DIM})")


_TUNING = ("block_m", "block_n", "block_k", "num_warps", "num_stages")


@functools.partial(jax.jit, static_argnames=("layout", "interpret") + _TUNING)
def quant_matmul(x, arrays: Mapping[str, jax.Array], *, layout: QuantLayout, interpret=None,
                 block_m=None, block_n=None, block_k=None, num_warps=4, num_stages=2):
    """x [M, K] @ W [K, N] with W quantized as `layout` describes; the Pallas kernel.

    Args:
      x: [M, K] float32 / bfloat16 / float16 activations.
      arrays: the weight's arrays by name, exactly `layout.param_specs()` (qweight, scales,
        and zeros / g_idx / input_scale where the layout has them).
      layout: static `QuantLayout`.
      interpret: None = compiled on GPU, Pallas interpret mode elsewhere.
      block_m, block_n, block_k: tile sizes, powers of two >= 16 (defaults: M rounded up to a
        power of two in [16, 64], 64, 64; fp8 W8A8: the largest of 128..16 dividing the scale
        groups).
      num_warps, num_stages: Triton launch parameters.

    Returns:
      [M, N] in x's dtype (float32 accumulation).
    """
    _validate(x, arrays, layout)
    num_rows = x.shape[0]
    if num_rows == 0:
        return jnp.zeros((0, layout.out_features), x.dtype)
    block_m = min(_MAX_BLOCK_M, max(MIN_DOT_DIM, next_pow2(num_rows))) if block_m is None else block_m
    block_n = _DEFAULT_BLOCK_N if block_n is None else block_n
    if layout.activation != "none":
        block_k = w8a8_block_k(layout, block_k)
    block_k = _DEFAULT_BLOCK_K if block_k is None else block_k
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        check_tile(name, value, MIN_DOT_DIM)
    operands = [arrays["qweight"], arrays["scales"]]
    operands += [arrays[name] for name in ("zeros", "g_idx") if name in layout.param_specs()]
    kernel_x = x
    if layout.activation != "none":
        kernel_x, x_scale = quantize_activations_fp8(x, layout, arrays.get("input_scale"))
        operands.append(x_scale)
    return _quant_matmul_call(
        kernel_x, operands, layout=layout, out_dtype=x.dtype, block_m=block_m, block_n=block_n,
        block_k=block_k, num_warps=num_warps, num_stages=num_stages,
        interpret=resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("layout",))
def quant_matmul_reference(x, arrays: Mapping[str, jax.Array], *, layout: QuantLayout):
    """Plain-jnp `quant_matmul` (same arguments and result): dequantize W, then one matmul.

    Weight-only: W is dequantized in float32, cast to x's dtype, and multiplied with float32
    accumulation (what the kernel does per tile). fp8 W8A8: x is quantized exactly as the
    kernel's input is, and both operands are dequantized to float32 before the matmul.
    The CPU fast path.
    """
    _validate(x, arrays, layout)
    w = dequantize_reference(arrays["qweight"], arrays["scales"], arrays.get("zeros"),
                             arrays.get("g_idx"), layout=layout)  # f32[K, N]
    if layout.activation != "none":
        x_q, x_scale = quantize_activations_fp8(x, layout, arrays.get("input_scale"))
        return matmul_f32(dequantize_activations(x_q, x_scale, layout), w).astype(x.dtype)
    if x.dtype == jnp.float32:
        return matmul_f32(x, w)
    return jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


__all__ = ["quant_matmul", "quant_matmul_reference", "quant_matmul_kernel", "w8a8_block_k"]
