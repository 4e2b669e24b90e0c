"""`ContiguousKVCache`: one contiguous cache per sequence of a static batch.

The simple generation path (`pagedjax.static_generate`), the logits oracle of the model tests
and the `jax-static` baseline. Dense jnp attention implementing every `AttentionSpec` feature
(sliding window, soft-cap, ALiBi, sinks), so the paged kernels can be checked against it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pallas_kernels.attention_spec import AttentionSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ContiguousKVCache:
    """A contiguous cache per sequence of a static batch; position p of sequence b is row p."""

    k: jax.Array  # [num_layers, batch, max_len, num_kv_heads, head_dim]
    v: jax.Array  # [num_layers, batch, max_len, num_kv_heads, head_dim]

    @classmethod
    def create(cls, num_layers, batch, max_len, num_kv_heads, head_dim, dtype):
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def attend(self, layer: int, q, k, v, positions, spec: AttentionSpec, *, alibi_slopes=None, sinks=None):
        """q `[B, T, Hq, D]`, k/v `[B, T, Hkv, D]`, positions `i32[B, T]` -> (`[B, T, Hq, D]`, cache).

        Tokens are written at their positions (positions >= max_len are dropped); a query at
        position p attends to rows <= p (and > p - window), so rows written by padding beyond a
        sequence's end are overwritten before any query can see them.
        """
        batch, seq = positions.shape
        rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, seq))  # [B, T]
        kc = self.k.at[layer, rows, positions].set(k.astype(self.k.dtype), mode="drop")
        vc = self.v.at[layer, rows, positions].set(v.astype(self.v.dtype), mode="drop")
        out = dense_attention(q, kc[layer], vc[layer], positions, spec, alibi_slopes=alibi_slopes, sinks=sinks)
        return out.astype(q.dtype), ContiguousKVCache(kc, vc)


def dense_attention(q, keys, values, positions, spec: AttentionSpec, *, alibi_slopes=None, sinks=None):
    """Causal attention of q `[B, T, Hq, D]` at `positions` i32[B, T] over keys/values
    `[B, S, Hkv, D]` (key j at position j), as `spec` says; float32 result `[B, T, Hq, D]`."""
    batch, seq, num_q_heads, head_dim = q.shape
    num_kv_heads = keys.shape[-2]
    group = num_q_heads // num_kv_heads
    qg = q.reshape(batch, seq, num_kv_heads, group, head_dim)  # [B, T, Hkv, G, D]
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys, preferred_element_type=jnp.float32) * spec.sm_scale
    if spec.logit_softcap is not None:
        scores = spec.logit_softcap * jnp.tanh(scores / spec.logit_softcap)
    key_pos = jnp.arange(keys.shape[1])  # [S]
    rel = key_pos[None, None, :] - positions[:, :, None]  # [B, T, S]: j - p
    if spec.use_alibi:
        slopes = jnp.asarray(alibi_slopes, jnp.float32).reshape(num_kv_heads, group)  # [Hkv, G]
        scores = scores + slopes[None, :, :, None, None] * rel[:, None, None].astype(jnp.float32)
    visible = rel <= 0
    if spec.sliding_window is not None:
        visible &= rel > -spec.sliding_window
    scores = jnp.where(visible[:, None, None], scores, -jnp.inf)  # [B, Hkv, G, T, S]
    if spec.use_sinks:
        sink = jnp.asarray(sinks, jnp.float32).reshape(1, num_kv_heads, group, 1, 1)
        m = jnp.maximum(jnp.max(scores, axis=-1, keepdims=True), sink)
        p = jnp.exp(scores - m)
        probs = p / (p.sum(axis=-1, keepdims=True) + jnp.exp(sink - m))
    else:
        probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(values.dtype), values, preferred_element_type=jnp.float32)
    return out.reshape(batch, seq, num_q_heads, head_dim)
