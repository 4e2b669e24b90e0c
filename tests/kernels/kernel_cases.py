"""Test inputs for the attention kernels and an independent float64 numpy oracle.

`make_batch` lays sequences out in a shared pool with randomly permuted blocks, pads the
tables with block 0, and poisons everything no kernel may read with NaN: block 0 and every
other unused block, the slots past each sequence's kv_len, and the q rows of padding tokens.
Outputs are poisoned too: interpret mode starts every kernel output as NaN, so an element no
program writes fails the comparison (the ragged output starts as zeros by design, and its
padding rows must stay exactly 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    kv_pool: jax.Array  # [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    layer: int
    block_tables: jax.Array  # i32[num_seqs, max_blocks_per_seq]
    kv_lens: jax.Array  # i32[num_seqs]
    query_start_loc: jax.Array  # i32[num_seqs + 1]

    @property
    def k_pages(self):
        return self.kv_pool[self.layer, 0]

    @property
    def v_pages(self):
        return self.kv_pool[self.layer, 1]


def make_batch(rng, seqs, *, num_q_heads, num_kv_heads, head_dim, block_size, dtype,
               num_pad_seqs=0, num_pad_tokens=0, extra_width=1, num_layers=2, layer=1,
               spare_blocks=3) -> Batch:
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
    for s, (_, kv_len) in enumerate(seqs):
        for j in range(pages[s]):
            tables[s, j] = next(ids)
            filled = min(block_size, kv_len - j * block_size)
            pool[:, :, :, tables[s, j], :filled] = rng.standard_normal(
                (num_layers, 2, num_kv_heads, filled, head_dim))
    q_lens = [q for q, _ in seqs]
    num_tokens = sum(q_lens) + num_pad_tokens
    q = rng.standard_normal((num_tokens, num_q_heads, head_dim)).astype(np.float32)
    q[sum(q_lens):] = np.nan
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return Batch(jnp.asarray(q, dtype), jnp.asarray(pool, dtype), layer, jnp.asarray(tables),
                 jnp.asarray([kv for _, kv in seqs], jnp.int32), jnp.asarray(qsl))


def decode_batch(rng, kv_lens, **kw) -> Batch:
    """One query token per sequence; a padding row is kv_len 0 (its q row is NaN)."""
    b = make_batch(rng, [(1, kv) for kv in kv_lens], **kw)
    q = np.array(b.q.astype(jnp.float32))
    q[np.asarray(b.kv_lens) == 0] = np.nan
    return dataclasses.replace(b, q=jnp.asarray(q, b.q.dtype))


def numpy_attention(b: Batch, sm_scale=None) -> np.ndarray:
    """float64 oracle, one query row at a time: [num_tokens, num_q_heads, head_dim]."""
    q = np.asarray(b.q.astype(jnp.float32), np.float64)
    pool = np.asarray(b.kv_pool[b.layer].astype(jnp.float32), np.float64)
    tables, kv_lens = np.asarray(b.block_tables), np.asarray(b.kv_lens)
    qsl = np.asarray(b.query_start_loc)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = pool.shape[1], pool.shape[3]
    group = num_q_heads // num_kv_heads
    scale = head_dim ** -0.5 if sm_scale is None else sm_scale
    out = np.zeros_like(q)
    for s in range(len(kv_lens)):
        q_len, kv_len = qsl[s + 1] - qsl[s], kv_lens[s]
        positions = np.arange(kv_len)
        slots = tables[s, positions // block_size], positions % block_size
        for i in range(q_len):
            pos = kv_len - q_len + i
            if pos < 0:  # nothing to attend (padding): zeros
                continue
            for h in range(num_q_heads):
                kh = h // group
                keys = pool[0, kh][slots][: pos + 1]  # [pos + 1, head_dim]
                values = pool[1, kh][slots][: pos + 1]
                logits = keys @ q[qsl[s] + i, h] * scale
                p = np.exp(logits - logits.max())
                out[qsl[s] + i, h] = p @ values / p.sum()
    return out


def assert_close(actual, expected, dtype, what=""):
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float32), np.float64)
    tol = TOLERANCES[jnp.dtype(dtype)]
    assert not np.isnan(actual).any(), f"{what}: NaN in output"
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


def max_error(actual, expected) -> float:
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float32), np.float64)
    return float(np.abs(actual - expected).max()) if actual.size else 0.0
