"""KV caches the shared attention layer writes to and attends over.

A cache is a pytree with one method,
`attend(layer, q, k, v, positions, spec, *, alibi_slopes=None, sinks=None) -> (out, cache)`:
it stores the new `k`/`v` of this forward pass for `layer` and returns attention of `q` over
everything cached so far (causal), as the layer's `AttentionSpec` says (scale, sliding window,
soft-cap, ALiBi with per-head `alibi_slopes` f32[Hq], learned per-head `sinks` f32[Hq]).
Two implementations share the model code:

- `PagedKVCache`: the engine's cache. Tokens are packed `[num_tokens, ...]` across sequences;
  K/V live in one `pallas_kernels.KVPool` (data `[num_layers, 2, num_kv_heads, num_blocks,
  block_size, head_dim]`, model dtype or fp8 / int8 with scales) addressed through block
  tables (`PagedAttentionMetadata`). Backends: `"reference"` (jnp
  gather), `"pallas"` (compiled kernels) and `"pallas_interpret"` (the kernels in interpret mode).
- `ContiguousKVCache` (models/contiguous_cache.py): a per-sequence contiguous cache
  `[num_layers, batch, max_len, ...]` for static batches `[batch, seq]`: the simple generation
  path, the logits oracle of the model tests and the `jax-static` baseline.

Tensor parallelism: with `metadata.mesh` set, the KV write and the attention run under
`shard_map` over the mesh's `tp` axis. q arrives sharded on its head axis, the pool on its
kv-head axis (models/sharding.py; the scales of a quantized pool share that axis), ALiBi
slopes and sinks on their head axis like q; each device writes and attends over its own heads
with the unchanged single-device kernels, and no collective runs inside attention.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import pallas_kernels as pk
from pallas_kernels.attention_spec import AttentionSpec
from models.sharding import TP_AXIS, shard_map

BACKENDS = ("reference", "pallas", "pallas_interpret")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedAttentionMetadata:
    """Where this step's tokens go in the paged pool and what each sequence attends to."""

    slot_mapping: jax.Array  # i32[num_tokens]: block_id * block_size + offset; negative = padding
    block_tables: jax.Array  # i32[num_seqs, max_blocks_per_seq]; padded with block 0
    kv_lens: jax.Array  # i32[num_seqs]: tokens in the cache after this step's writes; 0 = padding
    query_start_loc: jax.Array  # i32[num_seqs + 1]: sequence s owns tokens [qsl[s], qsl[s+1])
    backend: str = dataclasses.field(default="reference", metadata=dict(static=True))
    decode_only: bool = dataclasses.field(default=False, metadata=dict(static=True))  # one token per seq
    mesh: Mesh | None = dataclasses.field(default=None, metadata=dict(static=True))  # tensor parallel: `tp` axis

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"attention backend {self.backend!r} is not one of {BACKENDS}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKVCache:
    """The engine's paged KV pool plus this step's metadata.

    `kv_pool` is a `pallas_kernels.KVPool` (any `kv_cache_dtype`: writes quantize, reads
    dequantize) or a bare data array (an "auto" pool; the updated cache holds a bare array too).
    """

    kv_pool: pk.KVPool | jax.Array  # data [num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]
    metadata: PagedAttentionMetadata

    def attend(self, layer: int, q, k, v, positions, spec: AttentionSpec, *, alibi_slopes=None, sinks=None):
        """q `[T, Hq, D]`, k/v `[T, Hkv, D]`, alibi_slopes / sinks f32[Hq] (as `spec` says)
        -> (`[T, Hq, D]`, updated cache)."""
        del positions  # encoded in the metadata
        pool = pk.KVPool.wrap(self.kv_pool)
        m = self.metadata
        heads = {name: jnp.asarray(x, jnp.float32) for name, x in
                 (("alibi_slopes", alibi_slopes), ("sinks", sinks)) if x is not None}
        if m.mesh is None:
            out, pool = _write_and_attend(pool, layer, q, k, v, m, spec, heads)
        else:
            out, pool = _sharded_write_and_attend(pool, layer, q, k, v, m, spec, heads)
        new_pool = pool if isinstance(self.kv_pool, pk.KVPool) else pool.data
        return out, dataclasses.replace(self, kv_pool=new_pool)


def _write_and_attend(pool: pk.KVPool, layer: int, q, k, v, m: PagedAttentionMetadata, spec: AttentionSpec,
                      heads: dict):
    """One device: writes k/v `[T, Hkv, D]` into `pool` and attends q `[T, Hq, D]` over it.
    `heads`: the per-query-head arrays the spec uses (alibi_slopes, sinks: f32[Hq])."""
    pool = pk.write_kv_to_pool(pool, layer, k, v, m.slot_mapping)
    if m.backend == "reference":
        if m.decode_only:
            out = pk.paged_attention_reference_from_pool(q, pool, layer, m.block_tables, m.kv_lens,
                                                         spec=spec, **heads)
        else:
            out = pk.ragged_paged_attention_reference_from_pool(
                q, pool, layer, m.block_tables, m.kv_lens, m.query_start_loc, spec=spec, **heads)
    else:
        interpret = m.backend == "pallas_interpret"
        if m.decode_only:
            out = pk.paged_attention_from_pool(q, pool, layer, m.block_tables, m.kv_lens, spec=spec,
                                               interpret=interpret, **heads)
        else:
            out = pk.ragged_paged_attention_from_pool(
                q, pool, layer, m.block_tables, m.kv_lens, m.query_start_loc, spec=spec,
                interpret=interpret, **heads)
    return out, pool


def _sharded_write_and_attend(pool: pk.KVPool, layer: int, q, k, v, m: PagedAttentionMetadata,
                              spec: AttentionSpec, heads: dict):
    """`_write_and_attend` under `shard_map` over the `tp` axis: each device gets its slice of
    the q heads `[T, Hq/N, D]` (and of the per-head ALiBi slopes / sinks `[Hq/N]`) and of the
    pool's kv heads (data `[L, 2, Hp/N, ...]` and scales alike: axis 2 of every pool array).

    When the pool holds more heads than the model (Hp = N > Hkv: KV heads replicated), k/v
    arrive whole and each device keeps the heads its pool slice copies: pool head j holds
    KV head j // (Hp / Hkv), and device d's query heads are exactly those of its pool heads.
    """
    num_kv_heads, pool_heads = k.shape[1], pool.data.shape[2]
    copies = pool_heads // num_kv_heads  # replicas of each KV head in the pool (1 = plain sharding)
    tp = m.mesh.shape[TP_AXIS]
    local_meta = dataclasses.replace(m, mesh=None)
    token_heads = P(None, TP_AXIS, None)  # [T, H, D] split on H
    pool_spec = P(None, None, TP_AXIS)  # a prefix: every leaf of the pool splits on axis 2

    def local(pool, q, k, v, metadata, heads):
        if copies > 1:  # k, v: [T, Hkv, D] whole -> this device's [T, Hp/N, D]
            first = jax.lax.axis_index(TP_AXIS) * (pool_heads // tp)
            kv_heads = (first + jnp.arange(pool_heads // tp)) // copies
            k, v = jnp.take(k, kv_heads, axis=1), jnp.take(v, kv_heads, axis=1)
        return _write_and_attend(pool, layer, q, k, v, metadata, spec, heads)

    kv_spec = P() if copies > 1 else token_heads
    meta_spec = jax.tree.map(lambda _: P(), local_meta)
    head_specs = {name: P(TP_AXIS) for name in heads}
    fn = shard_map(local, m.mesh, in_specs=(pool_spec, token_heads, kv_spec, kv_spec, meta_spec, head_specs),
                   out_specs=(token_heads, pool_spec))
    return fn(pool, q, k, v, local_meta, heads)
