"""Structured outputs and logit controls through `LLM.generate`, batched with plain requests.

The tiny model has random weights, so only the constraints make its outputs valid: every finished
json_schema output must parse and validate, regex and choice outputs must match, logit_bias +100
forces its token, allowed_token_ids restrict, bad_words never appear; and the unconstrained
requests of the same batch keep exactly their tokens."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from pagedjax import LLM, SamplingParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
          "required": ["name", "age", "tags"], "additionalProperties": False}
PROMPTS = ["The quick brown fox", "import os", "Return a new dictionary", "x = 1"]


@pytest.fixture(scope="module", params=[True, False], ids=["async", "sync"])
def llm(request, llama_dir):
    return LLM(llama_dir, num_kv_blocks=96, max_model_len=256, max_num_seqs=16, async_scheduling=request.param)


def _plain():
    return SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_constrained_requests_are_valid_and_plain_ones_keep_their_tokens(llm):
    json_p = dict(json=SCHEMA, disable_any_whitespace=True)
    constrained = [
        SamplingParams(temperature=0.0, max_tokens=80, structured_outputs=json_p),
        SamplingParams(temperature=0.9, seed=4, n=3, max_tokens=80, structured_outputs=json_p, logprobs=2),
        SamplingParams(temperature=1.0, seed=2, max_tokens=30, structured_outputs={"regex": r"[a-c]{2,5}-\d{1,3}"}),
        SamplingParams(temperature=0.7, seed=9, n=2, max_tokens=10,
                       structured_outputs={"choice": ["apple", "banana split", "cherry"]}),
        SamplingParams(temperature=0.0, max_tokens=40, structured_outputs={"json_object": True,
                                                                           "disable_any_whitespace": True}),
        SamplingParams(temperature=0.0, max_tokens=30, structured_outputs={
            "grammar": 'root ::= "(" [0-9]+ ("+" [0-9]+)* ")"'}),
    ]
    alone = llm.generate(PROMPTS, _plain(), use_tqdm=False)
    mixed = llm.generate(PROMPTS + (PROMPTS * 2)[:len(constrained)], [_plain()] * len(PROMPTS) + constrained,
                         use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:len(PROMPTS)]] == [o.outputs[0].token_ids for o in alone]
    outs = mixed[len(PROMPTS):]
    finished = 0
    for out in outs[:2]:
        for comp in out.outputs:
            if comp.finish_reason == "stop":
                jsonschema.validate(json.loads(comp.text), SCHEMA)
                finished += 1
    assert finished >= 3, [c.text for o in outs[:2] for c in o.outputs]
    assert all(c.logprobs is not None and len(c.logprobs) == len(c.token_ids) for c in outs[1].outputs)
    assert re.fullmatch(r"[a-c]{2,5}-\d{1,3}", outs[2].outputs[0].text), outs[2].outputs[0].text
    assert {c.text for c in outs[3].outputs} <= {"apple", "banana split", "cherry"}
    assert outs[3].outputs[0].finish_reason == "stop"
    assert isinstance(json.loads(outs[4].outputs[0].text), dict) or outs[4].outputs[0].finish_reason == "length"
    assert re.fullmatch(r"\(\d+(\+\d+)*\)", outs[5].outputs[0].text) or outs[5].outputs[0].finish_reason == "length"
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_seeded_constrained_sampling_is_reproducible(llm):
    params = SamplingParams(temperature=1.0, seed=21, n=2, max_tokens=20, structured_outputs={"regex": "[xyz]{3,9}"})
    first = llm.generate("import os", params, use_tqdm=False)[0]
    again = llm.generate(["x = 1", "import os"], [_plain(), params], use_tqdm=False)[1]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]


def test_logit_bias_allowed_token_ids_and_bad_words(llm):
    tok = llm.get_tokenizer()
    forced = tok(" the", add_special_tokens=False).input_ids[-1]
    allowed = tok(" a b c", add_special_tokens=False).input_ids
    greedy = llm.generate("The quick brown fox", SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0]
    banned_word = tok.decode(greedy.token_ids[:1]).strip() or "x"
    outs = llm.generate(["The quick brown fox"] * 4, [
        SamplingParams(temperature=0.0, max_tokens=6, logit_bias={forced: 100}, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=1, max_tokens=12, allowed_token_ids=allowed, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=16, bad_words=[banned_word], ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=6, logit_bias={forced: -100, greedy.token_ids[0]: -100},
                       ignore_eos=True),
    ], use_tqdm=False)
    assert outs[0].outputs[0].token_ids == [forced] * 6
    assert set(outs[1].outputs[0].token_ids) <= set(allowed)
    banned = {tok(w, add_special_tokens=False).input_ids[0] for w in (banned_word, " " + banned_word)
              if len(tok(w, add_special_tokens=False).input_ids) == 1}
    assert banned and not banned & set(outs[2].outputs[0].token_ids)
    assert outs[3].outputs[0].token_ids[0] not in (forced, greedy.token_ids[0])


@pytest.mark.parametrize("params,message", [
    (dict(logit_bias={10**6: 1.0}), "logit_bias"),
    (dict(logit_bias={1: 101}), "logit_bias"),
    (dict(allowed_token_ids=[-3]), "allowed_token_ids"),
    (dict(allowed_token_ids=[]), "allowed_token_ids"),
    (dict(structured_outputs={"regex": "(unclosed"}), "regex"),
    (dict(structured_outputs={"json": {"type": "object"}, "regex": "a"}), "structured_outputs"),
    (dict(structured_outputs={"nonsense": 1}), "nonsense"),
    (dict(bad_words=[""]), "bad_words"),
])
def test_bad_controls_are_clear_errors(llm, params, message):
    with pytest.raises(ValueError, match=message):
        llm.generate("hi", SamplingParams(max_tokens=2, **params), use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
