"""The batched on-device sampler: one compiled function serves every mix of sampling parameters.

Per-row parameters travel as arrays (`SamplingTensors`), so a batch may mix greedy and random
rows, different temperatures, top-k/top-p/min-p, penalties and seeds without recompiling. The
order of logit processing follows vLLM: the allowed-token bitmask (grammars, allowed_token_ids,
bad_words) and logit_bias, then min_tokens' suppression, penalties, temperature, top-k, top-p,
min-p, then a Gumbel-max draw. Logprobs are those of the model's raw distribution
(log-softmax of the unprocessed logits), as vLLM returns by default.

Randomness: a row with a seed draws from `fold_in(key(seed), index)` where `index` counts that
completion's generated tokens, so a seeded request gives the same tokens whatever else shares
the batch; other rows draw from the engine's key for this step folded with the row's index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pagedjax.structured_output.bitmask import apply_token_bitmask

INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class CompletionSampling:
    """What the runner needs to sample one completion (built by the engine per completion).

    params: the request's SamplingParams. seed: this completion's own seed (completion 0 of a
    seeded request has the request's; others derive theirs from it), None = unseeded.
    suppress_ids: token ids forbidden while fewer than `params.min_tokens` were generated (the
    EOS and stop tokens). constraint: the allowed next tokens, as a bitmask row per step (None:
    any token).
    """

    params: object  # pagedjax.sampling_params.SamplingParams
    seed: int | None = None
    suppress_ids: tuple[int, ...] = ()
    constraint: object = None  # pagedjax.logit_controls.TokenConstraint: grammar, allowed ids, bad words

    @property
    def uses_penalties(self) -> bool:
        p = self.params
        return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0


def _column(dtype, fill, of=None, width=None):
    """A SamplingTensors field: its host dtype, the value of padding rows, and either `of` (the
    value of a completion's row, from its CompletionSampling: a persistent column) or `width`
    (a per-step 2-D field: which padded width it has)."""
    return dataclasses.field(metadata=dict(dtype=np.dtype(dtype), fill=fill, of=of, width=width))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingTensors:
    """Per-row sampling parameters of one step (rows = sampled sequences, padded). The one
    declaration of the sampling fields: the runner's persistent columns, the step's abstract
    arguments and the padding values all read the field metadata."""

    # f32[S]; 0 = greedy (clamped: beyond 1e6 any temperature is uniform sampling, and f32 stays finite)
    temperature: jax.Array = _column(np.float32, 0.0, lambda c: min(c.params.temperature, 1e6))
    top_k: jax.Array = _column(np.int32, 0, lambda c: min(c.params.top_k, INT32_MAX))  # i32[S]; 0 = off
    top_p: jax.Array = _column(np.float32, 1.0, lambda c: c.params.top_p)  # f32[S]; 1 = off
    min_p: jax.Array = _column(np.float32, 0.0, lambda c: c.params.min_p)  # f32[S]; 0 = off
    presence_penalty: jax.Array = _column(np.float32, 0.0, lambda c: c.params.presence_penalty)  # f32[S]
    frequency_penalty: jax.Array = _column(np.float32, 0.0, lambda c: c.params.frequency_penalty)  # f32[S]
    repetition_penalty: jax.Array = _column(np.float32, 1.0,  # f32[S]; 1 = off (clamped to stay finite in f32)
                                            lambda c: min(max(c.params.repetition_penalty, 1e-6), 1e6))
    seed: jax.Array = _column(np.uint32, 0, lambda c: (c.seed or 0) & 0xFFFFFFFF)  # u32[S]; used where has_seed
    has_seed: jax.Array = _column(np.bool_, False, lambda c: c.seed is not None)  # bool[S]
    sample_index: jax.Array = _column(np.int32, 0)  # i32[S]: tokens this completion has generated so far
    # i32[S, E]: token ids forced to -inf (min_tokens' EOS/stop ids), -1 = none
    suppress_tokens: jax.Array = _column(np.int32, -1, width="suppress")
    # i32[S, P] ids whose counts drive the penalties (-1 = padding); P = 0 when no row uses penalties.
    prompt_tokens: jax.Array = _column(np.int32, -1, width="penalty")  # repetition penalty only (prompt tokens)
    output_tokens: jax.Array = _column(np.int32, -1, width="penalty")  # all three penalties (generated tokens)
    # i32[S, ceil(V/32)] packed allowed-token bitmask (bit set = allowed; -1 words: all), or [S, 0]
    bitmask: jax.Array = _column(np.int32, -1, width="mask")
    # i32[S, B] token ids and f32[S, B] additive biases (logit_bias; -1 = padding), or [S, 0]
    bias_ids: jax.Array = _column(np.int32, -1, width="bias")
    bias_values: jax.Array = _column(np.float32, 0.0, width="bias")


    def replace_pending(self, pending):
        """`output_tokens` with each PENDING entry replaced by its row's `pending` token
        (i32[S], -1 = none): the sample of the previous step, still on the device."""
        out = jnp.where(self.output_tokens == PENDING, pending[:, None], self.output_tokens)
        return dataclasses.replace(self, output_tokens=out)


# An output_tokens entry the device fills in: the token sampled by the previous step (async).
PENDING = -2
SAMPLING_FIELDS = dataclasses.fields(SamplingTensors)
# The persistent per-completion columns (their value depends only on the completion).
REQUEST_COLUMNS = tuple(f for f in SAMPLING_FIELDS if f.metadata["of"] is not None)


def apply_penalties(logits, t: SamplingTensors):
    """vLLM's penalties: repetition (HF's rule, prompt+output), then frequency and presence (output)."""
    if t.output_tokens.shape[1] == 0 and t.prompt_tokens.shape[1] == 0:
        return logits
    rows, vocab = logits.shape

    def counts(tokens):  # i32[S, P] -> f32[S, V]
        valid = tokens >= 0
        idx = jnp.where(valid, tokens, 0)
        return jnp.zeros((rows, vocab), jnp.float32).at[jnp.arange(rows)[:, None], idx].add(valid.astype(jnp.float32))

    out_counts = counts(t.output_tokens)
    seen = (out_counts + counts(t.prompt_tokens)) > 0
    rep = t.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - t.frequency_penalty[:, None] * out_counts
    return logits - t.presence_penalty[:, None] * (out_counts > 0)


def _filter_top_k_top_p_min_p(scaled, t: SamplingTensors):
    """Masks (to -inf) tokens outside each row's min-p, top-k and nucleus top-p sets.

    vLLM's order: min-p on the full distribution (keep p >= min_p * max p), then top-k, then
    top-p over what is left, renormalised (keep the smallest prefix, by probability, whose mass
    reaches top_p; the most likely token is always kept). Ties at the cut-off are all kept.
    """
    vocab = scaled.shape[-1]
    sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]  # [S, V] descending
    full_probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = full_probs >= t.min_p[:, None] * full_probs[:, :1]  # [S, V]
    k = jnp.where(t.top_k > 0, jnp.minimum(t.top_k, vocab), vocab)  # [S]
    keep &= jnp.arange(vocab)[None] < k[:, None]
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep &= before < t.top_p[:, None]
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # [S, 1]
    return jnp.where(scaled >= cutoff, scaled, -jnp.inf)


def _row_keys(step_key, t: SamplingTensors):
    rows = t.seed.shape[0]
    seeded = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(t.seed, t.sample_index)
    unseeded = jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(rows))
    return jax.vmap(lambda h, a, b: jax.lax.cond(h, lambda: a, lambda: b))(t.has_seed, seeded, unseeded)


def sample(logits, t: SamplingTensors, step_key, *, num_logprobs: int):
    """logits f32[S, V] -> (token ids i32[S], their raw logprobs f32[S], ranks i32[S],
    top logprob ids i32[S, num_logprobs], top logprobs f32[S, num_logprobs])."""
    raw_logprobs = jax.nn.log_softmax(logits, axis=-1)
    rows = jnp.arange(logits.shape[0])
    if t.bitmask.shape[1]:  # grammars, allowed_token_ids, bad_words
        logits = apply_token_bitmask(logits, t.bitmask)
    if t.bias_ids.shape[1]:  # logit_bias
        ids = jnp.where(t.bias_ids >= 0, t.bias_ids, logits.shape[1])
        logits = logits.at[rows[:, None], ids].add(t.bias_values, mode="drop")
    suppress = t.suppress_tokens
    logits = logits.at[rows[:, None], jnp.where(suppress >= 0, suppress, logits.shape[1])].set(
        -jnp.inf, mode="drop")
    logits = apply_penalties(logits, t)
    greedy_ids = jnp.argmax(logits, axis=-1)
    greedy = t.temperature == 0.0
    scaled = logits / jnp.where(greedy, 1.0, t.temperature)[:, None]
    needs_filter = jnp.any(((t.top_k > 0) | (t.top_p < 1.0) | (t.min_p > 0.0)) & ~greedy)
    scaled = jax.lax.cond(needs_filter, _filter_top_k_top_p_min_p, lambda s, _: s, scaled, t)

    def draw(scaled):  # Gumbel-max: one categorical draw per row
        keys = _row_keys(step_key, t)
        gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (logits.shape[1],), jnp.float32))(keys)
        return jnp.argmax(scaled + gumbel, axis=-1)

    # NOTE: an all-greedy batch (the common serving case) skips the random draws altogether
    sampled_ids = jax.lax.cond(jnp.all(greedy), lambda s: greedy_ids, draw, scaled)
    token_ids = jnp.where(greedy, greedy_ids, sampled_ids).astype(jnp.int32)
    token_logprobs = raw_logprobs[rows, token_ids]
    ranks = jnp.sum(raw_logprobs > token_logprobs[:, None], axis=-1).astype(jnp.int32) + 1
    if num_logprobs:
        top_lp, top_ids = jax.lax.top_k(raw_logprobs, num_logprobs)
    else:
        top_lp = jnp.zeros((logits.shape[0], 0), jnp.float32)
        top_ids = jnp.zeros((logits.shape[0], 0), jnp.int32)
    return token_ids, token_logprobs, ranks, top_ids.astype(jnp.int32), top_lp
