"""A two-step scenario through `models.attention.PagedKVCache.attend`, and its dense answer.

Step 1 prefills two sequences (13 and 7 tokens, packed, plus padding); step 2 decodes one
token of each over what step 1 cached (the ragged kernel handles step 1, the decode kernel
step 2). The dense answer is `models.contiguous_cache.dense_attention` over each whole sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import pallas_kernels as pk
from models.attention import PagedAttentionMetadata, PagedKVCache
from models.contiguous_cache import dense_attention
from models.sharding import TP_AXIS

SPEC = pk.AttentionSpec(0.2, sliding_window=6, logit_softcap=4.0, use_alibi=True, use_sinks=True)
LENS = (13, 7)  # prefill lengths; each sequence then decodes one token
HQ, HKV, D, BS, LAYERS, LAYER, NUM_BLOCKS = 8, 2, 32, 8, 2, 1, 16
TABLES = np.asarray([[3, 9, 5, 0], [12, 1, 0, 0]], np.int32)  # 0: padding


def inputs(seed: int = 0):
    """q [T, HQ, D], k/v [T, HKV, D] of all (prefill + decode) tokens of both sequences, float32;
    ALiBi slopes and sinks f32[HQ]."""
    rng = np.random.default_rng(seed)
    total = sum(LENS) + len(LENS)
    q, k, v = (jnp.asarray(rng.standard_normal((total, h, D)), jnp.float32) for h in (HQ, HKV, HKV))
    slopes = jnp.asarray(2.0 ** (-np.arange(1, HQ + 1)), jnp.float32)
    sinks = jnp.asarray(rng.standard_normal(HQ), jnp.float32)
    return q, k, v, slopes, sinks


def _token_rows():
    """Row indices into `inputs()` of each sequence's tokens, in position order."""
    rows, start = [], 0
    for n in LENS:
        rows.append(list(range(start, start + n)) + [sum(LENS) + len(rows)])
        start += n
    return rows


def _slot(seq: int, pos: int) -> int:
    return int(TABLES[seq, pos // BS]) * BS + pos % BS


def run(backend: str, kv_cache_dtype: str = "auto", mesh=None, seed: int = 0):
    """Outputs of both steps (one jit), f32 [sum(LENS), HQ, D] and [len(LENS), HQ, D]."""
    q, k, v, slopes, sinks = inputs(seed)
    layout = pk.KVPoolLayout.create(LAYERS, HKV if mesh is None else max(HKV, mesh.shape[TP_AXIS]), BS, D,
                                    model_dtype=jnp.float32, kv_cache_dtype=kv_cache_dtype)
    sharding = None if mesh is None else NamedSharding(mesh, P(None, None, TP_AXIS))
    rows = _token_rows()
    tables = jnp.asarray(TABLES)
    # step 1: prefill both sequences (3 padding tokens, one padding sequence)
    prefill = jnp.asarray([r for seq in rows for r in seq[:-1]] + [0] * 3)
    prefill_meta = PagedAttentionMetadata(
        jnp.asarray([_slot(s, p) for s, n in enumerate(LENS) for p in range(n)] + [-1] * 3, jnp.int32),
        jnp.concatenate([tables, tables[:1] * 0]), jnp.asarray(list(LENS) + [0], jnp.int32),
        jnp.asarray([0, LENS[0], sum(LENS), sum(LENS)], jnp.int32), backend=backend, mesh=mesh)
    # step 2: one decode token each, over what step 1 cached
    decode = jnp.asarray([seq[-1] for seq in rows])
    decode_meta = PagedAttentionMetadata(
        jnp.asarray([_slot(s, n) for s, n in enumerate(LENS)], jnp.int32), tables,
        jnp.asarray([n + 1 for n in LENS], jnp.int32), jnp.arange(3, dtype=jnp.int32),
        backend=backend, decode_only=True, mesh=mesh)

    @jax.jit
    def steps(pool, q, k, v):
        heads = dict(alibi_slopes=slopes, sinks=sinks)
        out1, cache = PagedKVCache(pool, prefill_meta).attend(
            LAYER, q[prefill], k[prefill], v[prefill], None, SPEC, **heads)
        out2, cache = PagedKVCache(cache.kv_pool, decode_meta).attend(
            LAYER, q[decode], k[decode], v[decode], None, SPEC, **heads)
        return out1, out2, cache.kv_pool

    out1, out2, pool = steps(layout.allocate(NUM_BLOCKS, sharding), q, k, v)
    assert isinstance(pool, pk.KVPool)
    return np.asarray(out1[: sum(LENS)], np.float32), np.asarray(out2, np.float32)


def dense(seed: int = 0):
    """The dense answer of `run`'s two steps (float32, unquantized K/V)."""
    q, k, v, slopes, sinks = inputs(seed)
    outs = []
    for seq in _token_rows():
        idx = jnp.asarray(seq)
        positions = jnp.arange(len(seq))[None]
        outs.append(np.asarray(dense_attention(q[idx][None], k[idx][None], v[idx][None], positions, SPEC,
                                               alibi_slopes=slopes, sinks=sinks)[0]))
    return (np.concatenate([o[:-1] for o in outs]), np.stack([o[-1] for o in outs]))
