"""Embeddings of a decoder model: the final hidden state (after the last norm) of each prompt's last
token, L2-normalised (vLLM's default pooling for decoder-only models).

A small jitted forward pass over the model runner's parameters, separate from the engine's
paged steps: it builds the model with `nnx.merge(graphdef, params)` over a fresh
`ContiguousKVCache` per call and never touches the KV pool. Prompts are right-padded to
power-of-two lengths (at least 16, at most max_model_len) and grouped into power-of-two batches
of at most `max_batch_tokens` padded tokens, so a handful of shapes compile, whatever the
prompts. Call it from the engine's thread (the server's `AsyncEngine.call`), like the engine.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.contiguous_cache import ContiguousKVCache

MIN_BUCKET = 16


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.partial(jax.jit, static_argnums=(0,))
def _pooled(graphdef, params, token_ids, last_index):
    """token_ids `i32[B, T]` (right-padded), last_index `i32[B]` -> f32 `[B, hidden]`, unit L2 norm."""
    model = nnx.merge(graphdef, params)
    cfg = model.config
    batch, seq = token_ids.shape
    cache = ContiguousKVCache.create(cfg.num_layers, batch, seq, cfg.num_kv_heads, cfg.head_dim,
                                     model.embed_tokens.embedding.dtype)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))  # [B, T]
    hidden, _ = model(token_ids, positions, cache)  # [B, T, H], after the final norm
    last = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)[:, 0].astype(jnp.float32)  # [B, H]
    norm = jnp.sqrt(jnp.sum(last * last, axis=-1, keepdims=True))  # [B, 1]
    return last / jnp.maximum(norm, 1e-12)


class Embedder:
    """Last-token, L2-normalised embeddings over a model's parameters.

    Args:
        graphdef, params: the model (`nnx.split` halves; the engine's `runner.graphdef` / `runner.params`).
        hidden_size: the model's hidden size (the embedding width).
        max_model_len: the longest prompt accepted.
        max_batch_tokens: padded tokens of one forward pass (batch x bucket length), at least
            the largest bucket.
    """

    def __init__(self, graphdef, params, *, hidden_size: int, max_model_len: int, max_batch_tokens: int):
        if max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.graphdef, self.params = graphdef, params
        self.max_model_len = max_model_len
        self.max_batch_tokens = max(max_batch_tokens, self.bucket(max_model_len))
        self.hidden_size = hidden_size

    @classmethod
    def for_engine(cls, engine, max_batch_tokens: int) -> "Embedder":
        """Over an `LLMEngine`'s parameters (its public `runner`, `model_config`, `max_model_len`)."""
        return cls(engine.runner.graphdef, engine.runner.params, hidden_size=engine.model_config.hidden_size,
                   max_model_len=engine.max_model_len, max_batch_tokens=max_batch_tokens)

    def bucket(self, length: int) -> int:
        """The padded length of a prompt of `length` tokens."""
        return min(max(MIN_BUCKET, _pow2_at_least(length)), self.max_model_len)

    def batch_cap(self, bucket: int) -> int:
        """The most prompts of one bucket per forward pass (a power of two)."""
        rows = max(1, self.max_batch_tokens // bucket)
        return 1 << (rows.bit_length() - 1)

    def embed(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 `[len(prompts), hidden]` embeddings; ValueError for an empty or too long prompt."""
        for i, ids in enumerate(prompts):
            if not 1 <= len(ids) <= self.max_model_len:
                raise ValueError(f"prompt {i} has {len(ids)} tokens; embeddings need 1 to {self.max_model_len}")
        out = np.zeros((len(prompts), self.hidden_size), np.float32)
        by_bucket: dict[int, list[int]] = {}
        for i, ids in enumerate(prompts):
            by_bucket.setdefault(self.bucket(len(ids)), []).append(i)
        for bucket, indices in sorted(by_bucket.items()):
            cap = self.batch_cap(bucket)
            for start in range(0, len(indices), cap):
                chunk = indices[start:start + cap]
                rows = min(cap, _pow2_at_least(len(chunk)))
                tokens = np.zeros((rows, bucket), np.int32)  # [B, T]
                last = np.zeros(rows, np.int32)  # [B]
                for row, i in enumerate(chunk):
                    tokens[row, :len(prompts[i])] = prompts[i]
                    last[row] = len(prompts[i]) - 1
                pooled = np.asarray(_pooled(self.graphdef, self.params, tokens, last))  # [B, H]
                out[chunk] = pooled[:len(chunk)]
        return out

