"""Test inputs for the attention kernels and an independent float64 numpy oracle.

`make_batch` lays sequences out in a shared pool with randomly permuted blocks, pads the
tables with block 0, and poisons everything no kernel may read with NaN: block 0 and every
other unused block, the slots past each sequence's kv_len, and the q rows of padding tokens.
With `kv_cache_dtype` fp8 / int8 the pool is then quantized (random per-head fp8 scales);
int8 cannot hold NaN, so its unused slots get NaN scales instead. With `free_outside_window=W`
the blocks wholly before the window of each sequence's first query are poisoned too and their
table entries point at block 0, as a sliding-window block manager leaves them.
Outputs are poisoned too: interpret mode starts every kernel output as NaN, so an element no
program writes fails the comparison (the ragged output starts as zeros by design, and its
padding rows must stay exactly 0).

`numpy_attention` is the oracle: one query row at a time, in float64, over the pool's stored
values dequantized in float64, implementing `AttentionSpec` from its docstring.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels.kv_cache import quantize_fp8, quantize_int8

# |out - oracle| <= atol + rtol * |oracle| elementwise; oracle = float64 numpy on the same
# (already rounded) inputs ~ N(0, 1). Measured on the sweeps of test_attention.py (3 seeds,
# interpret mode on CPU), the worst |out - oracle| / (atol + rtol * |oracle|) was: f32 0.05
# (errors ~5e-7), bf16 0.30 (errors up to ~8e-3: the output's bf16 rounding, 2^-9 relative,
# on values up to ~4, plus p rounded to bf16 before P@V), f16 0.20 (errors ~1e-3, same two
# roundings at 2^-11). The jnp references land at the same ratios (their output is rounded
# too). The margin (3-20x) is for the compiled GPU kernels' other summation order and exp.
TOLERANCES = {
    jnp.dtype(jnp.float32): dict(atol=1e-5, rtol=1e-5),
    jnp.dtype(jnp.bfloat16): dict(atol=1e-2, rtol=1e-2),
    jnp.dtype(jnp.float16): dict(atol=2e-3, rtol=2e-3),
}

ON_GPU = jax.default_backend() == "gpu"
# Kernel execution modes: interpret everywhere, compiled only where jax has a GPU.
MODES = [
    pytest.param("interpret", id="interpret"),
    pytest.param("gpu", id="gpu", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not ON_GPU, reason="compiled Triton kernels need a GPU backend"
                           f" (jax.default_backend() is {jax.default_backend()!r})"),
    ]),
]


def interpret_flag(mode: str) -> bool:
    return mode == "interpret"


@dataclasses.dataclass
class Batch:
    q: jax.Array  # [num_tokens, num_q_heads, head_dim]
    kv_pool: jax.Array | pk.KVPool  # data [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    layer: int
    block_tables: jax.Array  # i32[num_seqs, max_blocks_per_seq]
    kv_lens: jax.Array  # i32[num_seqs]
    query_start_loc: jax.Array  # i32[num_seqs + 1]
    exact_pool: np.ndarray | None = None  # f64, the values before quantization (quantized pools)

    @property
    def pool(self) -> pk.KVPool:
        return pk.KVPool.wrap(self.kv_pool)

    @property
    def k_pages(self):
        return self.pool.data[self.layer, 0]

    @property
    def v_pages(self):
        return self.pool.data[self.layer, 1]

    @property
    def layer_kv(self) -> pk.LayerKV:
        return self.pool.layer(self.layer)


def _quantize_pool(rng, pool: np.ndarray, kv_cache_dtype: str) -> pk.KVPool:
    """pool f32 [L, 2, KVH, NB, BS, D] (NaN where unused) -> a quantized `KVPool`."""
    dtype = pk.storage_dtype(kv_cache_dtype, jnp.float32)
    if kv_cache_dtype == "int8":
        data, scales = quantize_int8(jnp.asarray(np.nan_to_num(pool, nan=0.0)))
        scales = jnp.where(jnp.asarray(np.isnan(pool[..., 0])), jnp.nan, scales)  # poison
        return pk.KVPool(data, scales.astype(jnp.bfloat16))
    scales = rng.uniform(0.5, 2.0, pool.shape[:3]).astype(np.float32)  # [L, 2, KVH]
    data = quantize_fp8(jnp.asarray(pool), jnp.asarray(scales)[:, :, :, None, None], dtype)
    return pk.KVPool(data, jnp.asarray(scales))


def make_batch(rng, seqs, *, num_q_heads, num_kv_heads, head_dim, block_size, dtype,
               num_pad_seqs=0, num_pad_tokens=0, extra_width=1, num_layers=2, layer=1,
               spare_blocks=3, kv_cache_dtype="auto", free_outside_window=None) -> Batch:
    """seqs: [(q_len, kv_len)] (decode: q_len 1). Padding sequences (0, 0) go at the end."""
    dtype = jnp.dtype(dtype)
    seqs = list(seqs) + [(0, 0)] * num_pad_seqs
    pages = [-(-kv // block_size) for _, kv in seqs]
    width = max(pages) + extra_width
    num_blocks = 1 + sum(pages) + spare_blocks  # block 0 stays unused: the tables' padding
    ids = iter(1 + rng.permutation(num_blocks - 1))
    tables = np.zeros((len(seqs), width), np.int32)
    pool = np.full((num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim), np.nan,
                   np.float32)
    for s, (q_len, kv_len) in enumerate(seqs):
        for j in range(pages[s]):
            tables[s, j] = next(ids)
            filled = min(block_size, kv_len - j * block_size)
            pool[:, :, :, tables[s, j], :filled] = rng.standard_normal(
                (num_layers, 2, num_kv_heads, filled, head_dim))
    if dtype != jnp.float32 and kv_cache_dtype == "auto":
        pool = np.asarray(jnp.asarray(pool, dtype).astype(jnp.float32))  # the stored values
    exact = None
    if kv_cache_dtype == "auto":
        kv_pool = jnp.asarray(pool, dtype)
    else:
        exact = pool.astype(np.float64)
        kv_pool = _quantize_pool(rng, pool, kv_cache_dtype)
    if free_outside_window is not None:  # what a sliding-window block manager frees
        for s, (q_len, kv_len) in enumerate(seqs):
            first_key = max(0, kv_len - q_len - free_outside_window + 1)
            for j in range(first_key // block_size):
                kv_pool = _poison_block(kv_pool, int(tables[s, j]))
                tables[s, j] = 0
    q_lens = [q for q, _ in seqs]
    num_tokens = sum(q_lens) + num_pad_tokens
    q = rng.standard_normal((num_tokens, num_q_heads, head_dim)).astype(np.float32)
    q[sum(q_lens):] = np.nan
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return Batch(jnp.asarray(q, dtype), kv_pool, layer, jnp.asarray(tables),
                 jnp.asarray([kv for _, kv in seqs], jnp.int32), jnp.asarray(qsl), exact)


def _poison_block(kv_pool, block: int):
    if isinstance(kv_pool, pk.KVPool):
        data, scales = kv_pool.data, kv_pool.scales
        if kv_pool.scale_kind == "per_token":
            return pk.KVPool(data.at[:, :, :, block].set(127), scales.at[:, :, :, block].set(jnp.nan))
        return pk.KVPool(data.at[:, :, :, block].set(jnp.nan), scales)
    return kv_pool.at[:, :, :, block].set(jnp.nan)


def decode_batch(rng, kv_lens, **kw) -> Batch:
    """One query token per sequence; a padding row is kv_len 0 (its q row is NaN)."""
    b = make_batch(rng, [(1, kv) for kv in kv_lens], **kw)
    q = np.array(b.q.astype(jnp.float32))
    q[np.asarray(b.kv_lens) == 0] = np.nan
    return dataclasses.replace(b, q=jnp.asarray(q, b.q.dtype))


def dequantized_layer(b: Batch, exact: bool = False) -> np.ndarray:
    """float64 [2, KVH, NB, BS, D]: the stored values of the batch's layer times their scales
    (exact=True: the values before quantization)."""
    if exact and b.exact_pool is not None:
        return b.exact_pool[b.layer]
    pool = b.pool
    data = np.asarray(pool.data[b.layer].astype(jnp.float32), np.float64)
    if pool.scale_kind == "per_head":
        data = data * np.asarray(pool.scales[b.layer], np.float64)[:, :, None, None, None]
    elif pool.scale_kind == "per_token":
        data = data * np.asarray(pool.scales[b.layer].astype(jnp.float32), np.float64)[..., None]
    return data


def alibi_slopes(num_heads: int) -> np.ndarray:
    """BLOOM's slopes 2^(-8 (h + 1) / n) (n a power of two; others interleave, irrelevant here)."""
    return (2.0 ** (-8.0 * (np.arange(num_heads) + 1) / num_heads)).astype(np.float32)


def numpy_attention(b: Batch, sm_scale=None, *, spec: pk.AttentionSpec | None = None,
                    alibi_slopes=None, sinks=None, exact: bool = False) -> np.ndarray:
    """float64 oracle, one query row at a time: [num_tokens, num_q_heads, head_dim].

    `spec` as AttentionSpec's docstring says (default: plain at `sm_scale`); exact=True reads
    the values a quantized pool was made from instead of its dequantized contents.
    """
    q = np.asarray(b.q.astype(jnp.float32), np.float64)
    pool = dequantized_layer(b, exact)
    tables, kv_lens = np.asarray(b.block_tables), np.asarray(b.kv_lens)
    qsl = np.asarray(b.query_start_loc)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = pool.shape[1], pool.shape[3]
    group = num_q_heads // num_kv_heads
    if spec is None:
        spec = pk.AttentionSpec(sm_scale=head_dim ** -0.5 if sm_scale is None else sm_scale)
    window = spec.sliding_window
    out = np.zeros_like(q)
    for s in range(len(kv_lens)):
        q_len, kv_len = qsl[s + 1] - qsl[s], kv_lens[s]
        for i in range(q_len):
            pos = kv_len - q_len + i
            if pos < 0:  # nothing to attend (padding): zeros
                continue
            first = 0 if window is None else max(0, pos - window + 1)
            positions = np.arange(first, pos + 1)
            slots = tables[s, positions // block_size], positions % block_size
            for h in range(num_q_heads):
                kh = h // group
                keys, values = pool[0, kh][slots], pool[1, kh][slots]  # [n, head_dim]
                logits = keys @ q[qsl[s] + i, h] * spec.sm_scale
                if spec.logit_softcap is not None:
                    logits = spec.logit_softcap * np.tanh(logits / spec.logit_softcap)
                if spec.use_alibi:
                    logits = logits + float(alibi_slopes[h]) * (positions - pos)
                m = logits.max()
                if spec.use_sinks:
                    m = max(m, float(sinks[h]))
                p = np.exp(logits - m)
                denom = p.sum() + (np.exp(float(sinks[h]) - m) if spec.use_sinks else 0.0)
                out[qsl[s] + i, h] = p @ values / denom
    return out


def assert_close(actual, expected, dtype, what=""):
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float32), np.float64)
    tol = TOLERANCES[jnp.dtype(dtype)]
    assert not np.isnan(actual).any(), f"{what}: NaN in output"
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


def max_error(actual, expected) -> float:
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float32), np.float64)
    return float(np.abs(actual - expected).max()) if actual.size else 0.0
