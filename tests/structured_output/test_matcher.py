"""GrammarMatcher semantics (EOS, rollback, refusal), batch bitmask filling, the compiler's cache and errors."""

from __future__ import annotations

import numpy as np
import pytest

from pagedjax.structured_output import (GrammarCompiler, StructuredOutputsParams, TokenizerInfo, allocate_bitmask,
                                        fill_bitmask_rows, unpack_bitmask)
from tests.structured_output.walk import random_walk

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}


def allowed_ids(matcher, info):
    bitmask = allocate_bitmask(1, info.vocab_size)
    matcher.fill_bitmask(bitmask, 0)
    return set(np.flatnonzero(unpack_bitmask(bitmask, info.vocab_size)[0]).tolist())


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_finished_grammar_allows_only_eos_then_terminates(compiler, tok, info):
    matcher = compiler.matcher(StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True))
    assert matcher.accept_tokens(encode(tok, '{"a":12}')) == len(encode(tok, '{"a":12}'))
    assert matcher.is_complete() and not matcher.is_terminated()
    assert allowed_ids(matcher, info) == {tok.eos_token_id}
    assert not matcher.accept(encode(tok, "1")[0])
    assert matcher.accept(tok.eos_token_id) and matcher.is_terminated()
    assert allowed_ids(matcher, info) == {tok.eos_token_id}


def test_eos_allowed_only_where_the_grammar_may_end(compiler, tok, info):
    matcher = compiler.matcher(StructuredOutputsParams(regex="a+b?"))
    assert tok.eos_token_id not in allowed_ids(matcher, info) and not matcher.accept(tok.eos_token_id)
    matcher.accept_tokens(encode(tok, "a"))
    assert tok.eos_token_id in allowed_ids(matcher, info) and len(allowed_ids(matcher, info)) > 1
    assert matcher.accept(tok.eos_token_id) and matcher.is_terminated() and matcher.num_accepted_tokens == 2


def test_refused_token_changes_nothing(compiler, tok, info):
    matcher = compiler.matcher(StructuredOutputsParams(choice=["yes", "no"]))
    before = allowed_ids(matcher, info)
    assert not matcher.is_allowed(encode(tok, "x")[0])
    assert not matcher.accept(encode(tok, "x")[0]) and matcher.error is None
    assert allowed_ids(matcher, info) == before and matcher.num_accepted_tokens == 0
    assert matcher.accept_tokens(encode(tok, "no") + encode(tok, "x")) == len(encode(tok, "no"))


@pytest.mark.parametrize("back", [1, 2, 3])
def test_rollback_restores_masks(compiler, tok, info, back):
    for params in (StructuredOutputsParams(json=SCHEMA), StructuredOutputsParams(regex="ab")):
        matcher = compiler.matcher(params)
        tokens, rows = random_walk(matcher, tok, info, np.random.default_rng(back))
        steps = len(tokens) + 1  # the EOS too
        back_n = min(back, steps)
        matcher.rollback(back_n)
        assert not matcher.is_terminated() and matcher.num_accepted_tokens == steps - back_n
        bitmask = allocate_bitmask(1, info.vocab_size)
        matcher.fill_bitmask(bitmask, 0)
        np.testing.assert_array_equal(bitmask[0], rows[steps - back_n])
        assert matcher.accept_tokens((tokens + [tok.eos_token_id])[steps - back_n:]) == back_n
        assert matcher.is_terminated()
    with pytest.raises(ValueError, match="rollback"):
        matcher.rollback(matcher.num_accepted_tokens + 1)


def test_reset_returns_to_start(compiler, tok, info):
    matcher = compiler.matcher(StructuredOutputsParams(json=SCHEMA))
    start = allowed_ids(matcher, info)
    random_walk(matcher, tok, info, np.random.default_rng(0))
    matcher.reset()
    assert allowed_ids(matcher, info) == start and not matcher.is_terminated() and matcher.num_accepted_tokens == 0


def test_matchers_of_one_grammar_are_independent(compiler, tok, info):
    params = StructuredOutputsParams(choice=["alpha", "beta"])
    first, second = compiler.matcher(params), compiler.matcher(params)
    first.accept_tokens(encode(tok, "alpha"))
    assert allowed_ids(second, info) == allowed_ids(compiler.matcher(params), info) != allowed_ids(first, info)


@pytest.mark.parametrize("use_executor", [False, True])
def test_fill_rows_mixes_constrained_and_free_rows(compiler, tok, info, use_executor):
    import llguidance

    executor = llguidance.LLExecutor(num_threads=2) if use_executor else None
    live = compiler.matcher(StructuredOutputsParams(json=SCHEMA))
    done = compiler.matcher(StructuredOutputsParams(choice=["x"]))
    done.accept_tokens(encode(tok, "x") + [tok.eos_token_id])
    other = compiler.matcher(StructuredOutputsParams(regex="[0-9]+"))
    bitmask = np.zeros((6, info.bitmask_width), np.int32)   # 6 rows for 4 matchers: a padded batch
    fill_bitmask_rows(bitmask, [live, None, done, other], executor=executor)
    allowed = unpack_bitmask(bitmask, info.vocab_size)
    assert allowed[1].all() and allowed[4:].all()
    assert (bitmask[[1, 4, 5]] == -1).all()
    assert set(np.flatnonzero(allowed[0])) == allowed_ids(live, info)
    assert set(np.flatnonzero(allowed[2])) == {tok.eos_token_id}
    assert set(np.flatnonzero(allowed[3])) == allowed_ids(other, info)
    with pytest.raises(ValueError, match="rows"):
        fill_bitmask_rows(bitmask[:2], [None, None, None])


def test_fill_bitmask_validates_the_array(compiler, info):
    matcher = compiler.matcher(StructuredOutputsParams(regex="a"))
    with pytest.raises(ValueError, match="int32"):
        matcher.fill_bitmask(np.zeros((1, info.bitmask_width), np.int64), 0)
    with pytest.raises(ValueError, match="words per row"):
        matcher.fill_bitmask(np.zeros((1, info.bitmask_width + 1), np.int32), 0)
    with pytest.raises(ValueError, match="row"):
        matcher.fill_bitmask(np.zeros((1, info.bitmask_width), np.int32), 1)


def test_several_eos_ids(tok):
    info = TokenizerInfo.from_huggingface(tok, vocab_size=600, eos_token_ids=[2, 4])
    compiler = GrammarCompiler(info)
    matcher = compiler.matcher(StructuredOutputsParams(choice=["ok"]))
    matcher.accept_tokens(encode(tok, "ok"))
    assert allowed_ids(matcher, info) == {2, 4}
    assert matcher.accept(4) and matcher.is_terminated()


def test_tokenizer_info_validates(tok):
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerInfo.from_huggingface(tok, vocab_size=len(tok) - 1)
    with pytest.raises(ValueError, match="eos_token_ids"):
        TokenizerInfo.from_huggingface(tok, vocab_size=520, eos_token_ids=[520])
    assert TokenizerInfo.from_huggingface(tok).vocab_size == len(tok)


def test_cache_hits_and_lru_eviction(info):
    compiler = GrammarCompiler(info, cache_size=2)
    a, b, c = (StructuredOutputsParams(regex=r) for r in ("a+", "b+", "c+"))
    first = compiler.compile(a)
    assert compiler.compile(StructuredOutputsParams(regex="a+")) is first      # equal params: one entry
    compiler.compile(b)
    compiler.compile(a)          # a is now the most recent
    compiler.compile(c)          # evicts b
    stats = compiler.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 3, 2)
    assert compiler.compile(a) is first
    assert compiler.compile(b) is not None and compiler.stats().misses == 4
    assert stats.total_compile_seconds >= stats.max_compile_seconds >= first.compile_seconds > 0


def test_submit_compiles_in_the_background(compiler):
    future = compiler.submit(StructuredOutputsParams(json=SCHEMA))
    assert future.result(timeout=30).params == StructuredOutputsParams(json=SCHEMA)
    bad = compiler.submit(StructuredOutputsParams(regex="(("))
    with pytest.raises(ValueError, match="regex"):
        bad.result(timeout=30)


@pytest.mark.parametrize("params, field", [
    (dict(regex="(unclosed"), "regex"),
    (dict(grammar='root ::= ( "a" '), "grammar"),
    (dict(grammar="start: undefined_rule"), "grammar"),
    (dict(json={"not": {"type": "string"}}), "json"),
    (dict(json={"type": "string", "pattern": "(("}), "json"),
])
def test_specs_that_do_not_compile_name_the_field(compiler, params, field):
    with pytest.raises(ValueError, match=rf"structured_outputs\.{field}"):
        compiler.compile(StructuredOutputsParams(**params))
    assert compiler.stats().entries == 0
