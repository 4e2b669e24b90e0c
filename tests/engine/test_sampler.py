"""The on-device sampler: logit processors against HF's (and vLLM's definitions), statistics of
sampled tokens, greedy equivalences."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats as scistats
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from pagedjax.sampler import SamplingTensors, _filter_top_k_top_p_min_p, apply_penalties, sample

VOCAB = 64


def tensors(rows: int, **overrides) -> SamplingTensors:
    base = dict(temperature=np.ones(rows, np.float32), top_k=np.zeros(rows, np.int32),
                top_p=np.ones(rows, np.float32), min_p=np.zeros(rows, np.float32),
                presence_penalty=np.zeros(rows, np.float32), frequency_penalty=np.zeros(rows, np.float32),
                repetition_penalty=np.ones(rows, np.float32), seed=np.zeros(rows, np.uint32),
                has_seed=np.zeros(rows, bool), sample_index=np.zeros(rows, np.int32),
                suppress_tokens=np.zeros((rows, 0), np.int32), prompt_tokens=np.zeros((rows, 0), np.int32),
                output_tokens=np.zeros((rows, 0), np.int32), bitmask=np.zeros((rows, 0), np.int32),
                bias_ids=np.zeros((rows, 0), np.int32), bias_values=np.zeros((rows, 0), np.float32))
    for k, v in overrides.items():
        base[k] = np.asarray(v, dtype=base[k].dtype) if np.ndim(v) else np.full_like(base[k], v)
    return SamplingTensors(**base)


def random_logits(rows=6, seed=0):
    return np.random.default_rng(seed).normal(0, 2.0, (rows, VOCAB)).astype(np.float32)


def test_repetition_penalty_matches_hf():
    logits = random_logits()
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, VOCAB, (6, 10))
    output = rng.integers(0, VOCAB, (6, 7))
    for penalty in (0.7, 1.3, 2.0):
        t = tensors(6, repetition_penalty=penalty, prompt_tokens=prompt.astype(np.int32),
                    output_tokens=output.astype(np.int32))
        ours = np.asarray(apply_penalties(jnp.asarray(logits), t))
        hf = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(np.concatenate([prompt, output], 1)),
                                                       torch.tensor(logits)).numpy()
        np.testing.assert_allclose(ours, hf, rtol=1e-6, atol=1e-6)


def test_presence_and_frequency_penalties_follow_vllm_definition():
    logits = random_logits()
    output = np.random.default_rng(2).integers(0, 8, (6, 12)).astype(np.int32)  # repeats within 8 ids
    output[:, -3:] = -1  # padding
    t = tensors(6, presence_penalty=0.5, frequency_penalty=0.25, output_tokens=output,
                prompt_tokens=np.full((6, 12), -1, np.int32))
    ours = np.asarray(apply_penalties(jnp.asarray(logits), t))
    expected = logits.copy()
    for r in range(6):
        counts = np.bincount(output[r][output[r] >= 0], minlength=VOCAB)
        expected[r] -= 0.25 * counts + 0.5 * (counts > 0)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def _kept(x):
    return np.isfinite(np.asarray(x))


@pytest.mark.parametrize("top_k,top_p,min_p,temperature", [
    (5, 1.0, 0.0, 1.0), (1, 1.0, 0.0, 0.7), (0, 0.9, 0.0, 1.0), (0, 0.5, 0.0, 1.3), (0, 1.0, 0.1, 1.0),
    (0, 1.0, 0.3, 0.5), (10, 0.8, 0.05, 0.9),
])
def test_top_k_top_p_min_p_match_hf_warpers(top_k, top_p, min_p, temperature):
    logits = random_logits(rows=8, seed=top_k + int(100 * top_p))
    scaled = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits))
    np.testing.assert_allclose(scaled.numpy(), logits / temperature, rtol=1e-6)
    t = tensors(8, top_k=top_k, top_p=top_p, min_p=min_p, temperature=temperature)
    ours = _filter_top_k_top_p_min_p(jnp.asarray(scaled.numpy()), t)
    hf = scaled  # vLLM's order: min-p, then top-k, then top-p
    if min_p:
        hf = MinPLogitsWarper(min_p)(None, hf)
    if top_k:
        hf = TopKLogitsWarper(top_k)(None, hf)
    if top_p < 1.0:
        hf = TopPLogitsWarper(top_p)(None, hf)
    np.testing.assert_array_equal(_kept(ours), _kept(hf.numpy()))
    kept = _kept(ours)
    np.testing.assert_allclose(np.asarray(ours)[kept], scaled.numpy()[kept])


def test_top_k_1_is_greedy_at_any_temperature():
    logits = random_logits(rows=16, seed=5)
    for temperature in (0.5, 1.0, 5.0):
        t = tensors(16, top_k=1, temperature=temperature)
        ids, *_ = sample(jnp.asarray(logits), t, jax.random.key(7), num_logprobs=0)
        np.testing.assert_array_equal(np.asarray(ids), logits.argmax(-1))


def test_logprobs_are_the_raw_log_softmax():
    logits = random_logits(rows=4, seed=9)
    t = tensors(4, temperature=0.3, top_k=3, repetition_penalty=1.5, prompt_tokens=np.arange(8).reshape(4, 2),
                output_tokens=np.full((4, 2), -1))
    ids, lps, ranks, top_ids, top_lp = sample(jnp.asarray(logits), t, jax.random.key(0), num_logprobs=5)
    raw = torch.log_softmax(torch.tensor(logits), -1).numpy()
    np.testing.assert_allclose(np.asarray(lps), raw[np.arange(4), np.asarray(ids)], atol=1e-6)
    np.testing.assert_allclose(np.asarray(top_lp), np.sort(raw, -1)[:, ::-1][:, :5], atol=1e-6)
    expected_rank = (raw > raw[np.arange(4), np.asarray(ids)][:, None]).sum(-1) + 1
    np.testing.assert_array_equal(np.asarray(ranks), expected_rank)


def _chi_square_pvalue(counts, probs):
    probs = probs.astype(np.float64)
    mask = probs * counts.sum() >= 5  # pool rare categories
    observed = np.append(counts[mask], counts[~mask].sum())
    expected = np.append(probs[mask], probs[~mask].sum()) * counts.sum()
    keep = expected > 0
    expected = expected[keep] * observed[keep].sum() / expected[keep].sum()  # exact totals for scipy
    return scistats.chisquare(observed[keep], expected).pvalue


@pytest.mark.parametrize("mode", ["plain", "seeded", "top_k", "top_p"])
def test_sampled_frequencies_match_the_distribution(mode):
    rows = 20000
    logits = np.random.default_rng(11).normal(0, 1.5, VOCAB).astype(np.float32)
    probs = np.exp(logits - logits.max())
    over = {}
    if mode == "seeded":  # every row its own seed: the seeded stream is a proper sampler too
        over = dict(has_seed=np.ones(rows, bool), seed=np.arange(rows, dtype=np.uint32) * 7919)
    elif mode == "top_k":
        over = dict(top_k=8)
        probs[np.argsort(-logits)[8:]] = 0
    elif mode == "top_p":
        over = dict(top_p=0.7)
        order = np.argsort(-logits)
        p = probs[order] / probs.sum()
        cut = np.searchsorted(np.cumsum(p), 0.7) + 1
        probs[order[cut:]] = 0
    probs /= probs.sum()
    ids, *_ = jax.jit(lambda l, t: sample(l, t, jax.random.key(123), num_logprobs=0))(
        jnp.broadcast_to(jnp.asarray(logits), (rows, VOCAB)), tensors(rows, **over))
    counts = np.bincount(np.asarray(ids), minlength=VOCAB)
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    assert _chi_square_pvalue(counts, probs) > 1e-3


def test_chi_square_detects_a_wrong_distribution():
    """The statistical test has power: a temperature of 1.2 instead of 1 is rejected."""
    rows = 20000
    logits = np.random.default_rng(11).normal(0, 1.5, VOCAB).astype(np.float32)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    ids, *_ = sample(jnp.broadcast_to(jnp.asarray(logits), (rows, VOCAB)), tensors(rows, temperature=1.2),
                     jax.random.key(1), num_logprobs=0)
    assert _chi_square_pvalue(np.bincount(np.asarray(ids), minlength=VOCAB), probs) < 1e-6


def test_seeded_rows_ignore_their_neighbours():
    logits = random_logits(rows=8, seed=3)
    t = tensors(8, has_seed=np.ones(8, bool), seed=np.full(8, 42, np.uint32), sample_index=np.full(8, 3))
    a, *_ = sample(jnp.asarray(logits), t, jax.random.key(0), num_logprobs=0)
    other = logits.copy()
    other[1:] = random_logits(rows=7, seed=99)
    t2 = dataclasses.replace(t, temperature=np.asarray([1, 0.2, 3, 1, 1, 1, 1, 1], np.float32))
    b, *_ = sample(jnp.asarray(other), t2, jax.random.key(1), num_logprobs=0)
    assert int(a[0]) == int(b[0])  # same seed, index and logits: same token whatever else is in the batch
