"""Static-batch generation over a contiguous KV cache: simple, and the oracle for the paged engine.

Every sequence of a batch reserves `max_len` cache rows; prompts are right-padded; all
sequences decode in lock-step until every one has finished. No paging, no continuous
batching: what the paged engine must reproduce token for token (greedy), and the `jax-static`
throughput baseline.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.contiguous_cache import ContiguousKVCache
from models.transformer import CausalLM


@functools.partial(jax.jit, static_argnums=(0, 6))
def _prefill(graphdef, state, cache, token_ids, positions, last_index, all_logits: bool = False):
    """token_ids/positions `i32[B, T]`, last_index `i32[B]` -> (f32 logits `[B, V]`, cache), and with
    `all_logits` the logits of every prompt position `[B, T, V]` too."""
    model = nnx.merge(graphdef, state)
    hidden, cache = model(token_ids, positions, cache)  # [B, T, H]
    if all_logits:
        logits = model.compute_logits(hidden)  # [B, T, V]
        return jnp.take_along_axis(logits, last_index[:, None, None], axis=1)[:, 0], cache, logits
    last = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)[:, 0]  # [B, H]
    return model.compute_logits(last), cache


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _decode(graphdef, state, cache, token_ids, positions):
    """token_ids/positions `i32[B]` -> (f32 logits `[B, V]`, cache)."""
    model = nnx.merge(graphdef, state)
    hidden, cache = model(token_ids[:, None], positions[:, None], cache)
    return model.compute_logits(hidden[:, 0]), cache


@functools.partial(jax.jit, static_argnums=(0,))
def _all_logits(graphdef, state, token_ids):
    model = nnx.merge(graphdef, state)
    batch, seq = token_ids.shape
    cfg = model.config
    cache = ContiguousKVCache.create(cfg.num_layers, batch, seq, cfg.num_kv_heads, cfg.head_dim,
                                     model.embed_tokens.embedding.dtype)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    hidden, _ = model(token_ids, positions, cache)
    return model.compute_logits(hidden)


def forward_logits(model: CausalLM, token_ids) -> jax.Array:
    """float32 logits `[B, T, vocab]` of a full causal forward pass over `token_ids` `i32[B, T]`."""
    graphdef, state = nnx.split(model)
    return _all_logits(graphdef, state, jnp.asarray(token_ids, jnp.int32))


@functools.partial(jax.jit, static_argnums=(1,))
def _sample(logits, temperature: float, key):
    """f32 logits `[B, V]` -> i32 `[B]`: argmax when `temperature` is 0, else a categorical draw."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


class StaticGenerator:
    """Generates for a static batch of prompts with a contiguous per-sequence cache."""

    def __init__(self, model: CausalLM, max_len: int, cache_dtype=None):
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.max_len = max_len
        self.cache_dtype = cache_dtype or model.embed_tokens.embedding.dtype

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 seed: int = 0, eos_token_ids: Sequence[int] = (), ignore_eos: bool = False,
                 pad_batch_to: int | None = None, pad_prompt_to: int | None = None,
                 cache_len: int | None = None, return_prompt_logits: bool = False):
        """Generated token ids per prompt (the prompt excluded); stops at eos unless `ignore_eos`.

        `pad_batch_to` / `pad_prompt_to` pad the batch and the prompt width beyond what the prompts
        need, and `cache_len` (default `max_len`) sets the cache rows per sequence, so callers
        can keep to a few compiled shapes. With `return_prompt_logits`, returns
        `(outputs, logits)`: also the float32 logits of every prompt position, one `[len, V]`
        numpy array per prompt, from the same prefill.
        """
        if not prompts:
            return ([], []) if return_prompt_logits else []
        cache_len = cache_len or self.max_len
        lengths = np.array([len(p) for p in prompts], np.int32)
        if lengths.min() < 1:
            raise ValueError("empty prompt")
        if lengths.max() + max_new_tokens > cache_len:
            raise ValueError(f"prompt ({lengths.max()}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"the cache length {cache_len}")
        batch = max(len(prompts), pad_batch_to or 0)
        seq = max(int(lengths.max()), pad_prompt_to or 0)
        tokens = np.zeros((batch, seq), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
        last = np.zeros(batch, np.int32)
        last[: len(prompts)] = lengths - 1
        positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq))
        cfg = self.config
        cache = ContiguousKVCache.create(cfg.num_layers, batch, cache_len, cfg.num_kv_heads, cfg.head_dim,
                                         self.cache_dtype)
        if return_prompt_logits:
            logits, cache, every = _prefill(self.graphdef, self.state, cache, tokens, positions, last, True)
            every = np.asarray(every)
            prompt_logits = [every[i, : len(p)] for i, p in enumerate(prompts)]
        else:
            logits, cache = _prefill(self.graphdef, self.state, cache, tokens, positions, last)
        key = jax.random.key(seed)
        pos = np.zeros(batch, np.int32)
        pos[: len(prompts)] = lengths
        eos = set(eos_token_ids)
        outputs: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(len(prompts), bool)
        for step in range(max_new_tokens):
            if temperature:
                key, sub = jax.random.split(key)
            else:
                sub = key  # unused by greedy: no per-step key split on the host
            next_ids = np.asarray(_sample(logits, temperature, sub))  # the host fetch ends the step
            for i in range(len(prompts)):
                if not done[i]:
                    outputs[i].append(int(next_ids[i]))
                    done[i] = (not ignore_eos and int(next_ids[i]) in eos)
            if done.all() or step == max_new_tokens - 1:
                break
            logits, cache = _decode(self.graphdef, self.state, cache, next_ids, pos)
            pos = pos + 1
        return (outputs, prompt_logits) if return_prompt_logits else outputs
