"""The engine's loop in miniature: host bitmask fill -> jitted masked sampling -> accept, over a mixed batch."""

from __future__ import annotations

import json
import re

import jax
import jsonschema
import numpy as np

from pagedjax.structured_output import StructuredOutputsParams, allocate_bitmask, apply_token_bitmask, fill_bitmask_rows
from tests.structured_output.walk import closing_tokens

SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 6},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["word", "n"], "additionalProperties": False}


@jax.jit
def sample(logits, bitmask, key, step):
    """Per-row keys, so a row's token depends on its own logits, mask and key only."""
    masked = apply_token_bitmask(logits, bitmask)                                    # [S, V]
    keys = jax.random.split(jax.random.fold_in(key, step), logits.shape[0])
    return jax.vmap(jax.random.categorical)(keys, masked)                             # i32[S]


def fake_logits(rng, step, rows, info, closing):
    """Random 'model' logits that lean towards closing tokens as the step grows (so outputs end)."""
    logits = rng.standard_normal((rows, info.vocab_size)).astype(np.float32) * 2
    logits[:, closing] += min(step, 40) / 4
    logits[:, list(info.eos_token_ids)] += min(step, 40) / 4
    return logits


def run(compiler, tok, info, params_per_row, steps=80, seed=0):
    matchers = [compiler.matcher(p) if p is not None else None for p in params_per_row]
    closing = closing_tokens(tok, info.vocab_size)
    rng, key = np.random.default_rng(seed), jax.random.key(seed)
    outputs = [[] for _ in params_per_row]
    bitmask = allocate_bitmask(len(params_per_row), info.vocab_size)
    for step in range(steps):
        fill_bitmask_rows(bitmask, matchers)
        logits = fake_logits(rng, step, len(params_per_row), info, closing)
        tokens = np.asarray(sample(logits, bitmask, key, step))
        for row, token in enumerate(tokens.tolist()):
            matcher = matchers[row]
            if matcher is not None:
                if matcher.is_terminated():
                    continue
                assert matcher.accept(token), "a sampled token must be allowed by its row's mask"
                if matcher.is_terminated():
                    continue
            outputs[row].append(token)
    return outputs, matchers


def test_mixed_batch_constrained_rows_valid_free_rows_unchanged(compiler, tok, info):
    rows = [StructuredOutputsParams(json=SCHEMA), None, StructuredOutputsParams(regex="[a-c]{2}-[0-9]"), None]
    mixed, matchers = run(compiler, tok, info, rows)
    alone, _ = run(compiler, tok, info, [None] * 4)
    assert mixed[1] == alone[1] and mixed[3] == alone[3]           # unconstrained rows: same tokens
    assert all(m.is_terminated() for m in matchers if m is not None)
    jsonschema.validate(json.loads(tok.decode(mixed[0])), SCHEMA)
    assert re.fullmatch("[a-c]{2}-[0-9]", tok.decode(mixed[2]))
    assert mixed[0] != alone[0]
