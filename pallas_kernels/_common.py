"""Host-side pieces shared by the attention kernels and references: supported shapes,
argument validation (`ValueError` naming the argument), the attention spec and its per-head
arrays, tuning-knob checks, `resolve_interpret`.

In-kernel pieces live in `_tile.py`, the jnp reference math in `_reference.py`, tile sizing
against the GPU's limits in `tiles.py`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._compat import TritonCompilerParams
from pallas_kernels.attention_spec import AttentionSpec
from pallas_kernels.kv_pool import FP8_DTYPES, PER_TOKEN, KVPool, KVPoolLayout, LayerKV

# NOTE: head dims that are not powers of two run padded to the next power of two inside the
# kernels (masked loads); the KV pool itself is never padded.
SUPPORTED_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)
SUPPORTED_BLOCK_SIZES = (8, 16, 32, 64)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# Triton's `dot` wants every dimension >= 16.
MIN_DOT_DIM = 16
# Finite "minus infinity" for masked logits: keeps exp() and max() free of inf - inf.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def resolve_interpret(interpret: bool | None) -> bool:
    """`None` -> compiled on GPU, Pallas interpret mode elsewhere."""
    if interpret is None:
        return jax.default_backend() != "gpu"
    return bool(interpret)


# ----------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class AttentionDims:
    """Static sizes of one attention call, read off validated arguments."""

    num_seqs: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    num_blocks: int
    block_size: int
    max_blocks_per_seq: int

    @property
    def group(self) -> int:  # query heads per kv head (GQA ratio)
        return self.num_q_heads // self.num_kv_heads

    @property
    def head_dim_pad(self) -> int:  # Triton tiles need powers of two
        return next_pow2(self.head_dim)


def _check_int32(name: str, x, shape: tuple[int, ...] | None, ndim: int) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.dtype != jnp.int32:
        raise ValueError(f"{name} must be int32, got {x.dtype}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")


def validate_pool(kv_pool, layer) -> tuple[int, int, int, int]:
    """kv_pool [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim], static layer.

    Returns the page shape of one layer: (num_kv_heads, num_blocks, block_size, head_dim).
    """
    if kv_pool.ndim != 6 or kv_pool.shape[1] != 2:
        raise ValueError("kv_pool must be [num_layers, 2, num_kv_heads, num_blocks, block_size,"
                         f" head_dim], got shape {kv_pool.shape}")
    num_layers = kv_pool.shape[0]
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < num_layers:
        raise ValueError(f"layer must be a static int in [0, {num_layers}), got {layer!r}")
    return tuple(kv_pool.shape[2:])


def validate_attention_args(q, pages_shape, pages_dtype, block_tables, kv_lens,
                            query_start_loc=None, *, decode: bool, kernel: bool) -> AttentionDims:
    """Checks an attention call's shapes and dtypes; returns its static sizes.

    q: [num_seqs (decode) or num_tokens (ragged), num_q_heads, head_dim]
    pages_shape: (num_kv_heads, num_blocks, block_size, head_dim) of one layer's K (= V) pages.
    kernel: also check what the Pallas kernels support (head dims, block sizes, dtypes); the
    jnp references take any of them.
    """
    if q.ndim != 3:
        raise ValueError(f"q must be [tokens, num_q_heads, head_dim], got shape {q.shape}")
    num_kv_heads, num_blocks, block_size, head_dim = pages_shape
    num_q_heads = q.shape[1]
    if q.shape[2] != head_dim:
        raise ValueError(f"head_dim mismatch: q has {q.shape[2]}, the KV pages have {head_dim}")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads"
                         f" ({num_kv_heads})")
    if q.dtype != pages_dtype and not is_quantized(pages_dtype):
        raise ValueError(f"dtype mismatch: q is {q.dtype}, the KV pages are {pages_dtype}"
                         " (pools are stored in the model's dtype, fp8 or int8)")
    if kernel:
        if head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"head_dim {head_dim} is not supported (supported: "
                             f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
        if block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size {block_size} is not supported (supported: "
                             f"{', '.join(map(str, SUPPORTED_BLOCK_SIZES))})")
        if q.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {q.dtype} is not supported (float32, bfloat16, float16)")
    _check_int32("block_tables", block_tables, None, 2)
    num_seqs = block_tables.shape[0]
    if decode and q.shape[0] != num_seqs:
        raise ValueError(f"q has {q.shape[0]} rows but block_tables has {num_seqs} sequences"
                         " (decode: one query token per sequence)")
    _check_int32("kv_lens", kv_lens, (num_seqs,), 1)
    if query_start_loc is not None:
        _check_int32("query_start_loc", query_start_loc, (num_seqs + 1,), 1)
    return AttentionDims(num_seqs, num_q_heads, num_kv_heads, head_dim, num_blocks, block_size,
                         block_tables.shape[1])


def is_quantized(dtype) -> bool:
    """fp8 / int8 storage: the kernels dequantize it to q's dtype."""
    return jnp.dtype(dtype) in FP8_DTYPES or jnp.dtype(dtype) == jnp.int8


def resolve_spec(spec: AttentionSpec | None, sm_scale, head_dim: int) -> AttentionSpec:
    """The call's spec: `spec`, or plain attention at `sm_scale` (default head_dim ** -0.5)."""
    if spec is None:
        return AttentionSpec(sm_scale=head_dim ** -0.5 if sm_scale is None else float(sm_scale))
    if not isinstance(spec, AttentionSpec):
        raise ValueError(f"spec must be an AttentionSpec, got {type(spec).__name__}")
    if sm_scale is not None:
        raise ValueError("pass either spec or sm_scale, not both (the spec carries sm_scale)")
    return spec


def validate_head_arrays(spec: AttentionSpec, num_q_heads: int, alibi_slopes, sinks):
    """ALiBi slopes and sinks: f32[num_q_heads] exactly when the spec uses them.

    Returns them as float32 (None where the spec does not use them).
    """
    out = []
    for name, value, used in (("alibi_slopes", alibi_slopes, spec.use_alibi),
                              ("sinks", sinks, spec.use_sinks)):
        flag = "use_alibi" if name == "alibi_slopes" else "use_sinks"
        if not used:
            if value is not None:
                raise ValueError(f"{name} given but spec.{flag} is False")
            out.append(None)
            continue
        if value is None:
            raise ValueError(f"spec.{flag} needs {name} f32[num_q_heads={num_q_heads}]")
        if getattr(value, "shape", None) != (num_q_heads,) or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(f"{name} must be a float array of shape ({num_q_heads},) (one per query"
                             f" head), got {getattr(value, 'dtype', type(value).__name__)}"
                             f"{list(getattr(value, 'shape', ()))}")
        out.append(jnp.asarray(value, jnp.float32))
    return tuple(out)


def validate_pages(k_pages, v_pages) -> None:
    """k_pages, v_pages: [num_kv_heads, num_blocks, block_size, head_dim], same shape and dtype."""
    if k_pages.ndim != 4:
        raise ValueError("k_pages must be [num_kv_heads, num_blocks, block_size, head_dim], got"
                         f" shape {k_pages.shape}")
    if v_pages.shape != k_pages.shape or v_pages.dtype != k_pages.dtype:
        raise ValueError(f"v_pages {v_pages.shape} {v_pages.dtype} must match k_pages"
                         f" {k_pages.shape} {k_pages.dtype}")


def pages_to_layer(k_pages, v_pages, k_scales=None, v_scales=None) -> LayerKV:
    """Per-layer pages [num_kv_heads, num_blocks, block_size, head_dim] x2 and, for fp8 / int8
    pages, their scales (f32[Hkv], default 1.0 / bf16[Hkv, num_blocks, block_size]) as a `LayerKV`."""
    validate_pages(k_pages, v_pages)
    if (k_scales is None) != (v_scales is None):
        raise ValueError("give both k_scales and v_scales, or neither")
    layout = KVPoolLayout(1, k_pages.shape[0], k_pages.shape[2], k_pages.shape[3], k_pages.dtype)
    shape = layout.scale_shape(k_pages.shape[1])
    if shape is None:
        if k_scales is not None:
            raise ValueError(f"{k_pages.dtype} pages take no k_scales / v_scales")
        return LayerKV(k_pages, v_pages, None, None)
    expected = shape[2:]
    if k_scales is None:
        if layout.scale_kind == PER_TOKEN:
            raise ValueError(f"int8 pages need k_scales and v_scales {layout.scale_dtype}{list(expected)}")
        k_scales = v_scales = jnp.ones(expected, jnp.float32)  # vLLM's default fp8 scale
    for name, s in (("k_scales", k_scales), ("v_scales", v_scales)):
        if s.shape != expected or s.dtype != layout.scale_dtype:
            raise ValueError(f"{name} must be {layout.scale_dtype}{list(expected)} for {k_pages.dtype}"
                             f" pages, got {s.dtype}{list(s.shape)}")
    return LayerKV(k_pages, v_pages, k_scales, v_scales)


def pages_to_pool(k_pages, v_pages, k_scales=None, v_scales=None) -> KVPool:
    """`pages_to_layer`'s arrays stacked into a one-layer `KVPool` (the kernels' layout)."""
    layer = pages_to_layer(k_pages, v_pages, k_scales, v_scales)
    scales = None if layer.k_scales is None else jnp.stack([layer.k_scales, layer.v_scales])[None]
    return KVPool(jnp.stack([k_pages, v_pages])[None], scales)


def check_tile(name: str, value: int, minimum: int = 1) -> int:
    """Tuning knobs that size Triton tiles must be powers of two >= minimum."""
    if not isinstance(value, (int, np.integer)) or value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value!r}")
    return int(value)


def compiler_params(num_warps: int, num_stages: int):
    """Triton compiler params; passing them is what selects Pallas' Triton backend on GPU."""
    check_tile("num_warps", num_warps)  # NOTE: its upper bound is the target's (tiles.check_fits)
    if not isinstance(num_stages, (int, np.integer)) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
    return TritonCompilerParams(num_warps=int(num_warps), num_stages=int(num_stages))
