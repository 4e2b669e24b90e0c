"""Structured outputs and logit controls through both endpoints, with the official openai client.

The model has random weights, so only the grammar keeps its outputs in shape: every finished
json_schema output must parse and validate, every regex / choice / grammar output must match.
Schemas are bounded and whitespace is compact (`disable_any_whitespace`), so outputs finish.
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel
from typing import Literal

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import MODEL, REQUEST_TIMEOUT_S, async_client, wait_until_idle

COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}
MESSAGES = [{"role": "user", "content": "Reply in JSON."}]
SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]}},
     "required": ["ok", "color"], "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1,
                                               "maxItems": 3}},
     "required": ["n", "tags"], "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string", "minLength": 1,
                                                                       "maxLength": 4}},
                                "required": ["k"], "additionalProperties": False}, "minItems": 1, "maxItems": 2},
    {"type": "object", "properties": {"id": {"type": "integer", "minimum": -5, "maximum": 5},
                                      "note": {"anyOf": [{"type": "null"}, {"const": "x"}]}},
     "required": ["id", "note"], "additionalProperties": False},
]


def _schema_format(schema, name="answer"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _check_json(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_json_schema_outputs_validate_chat_and_completions(client, schema):
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, seed=11, max_tokens=90,
                                          response_format=_schema_format(schema), extra_body=COMPACT)
    comp = client.completions.create(model=MODEL, prompt="JSON:", n=3, seed=12, max_tokens=90,
                                     extra_body={**COMPACT, "response_format": _schema_format(schema)})
    outputs = [(c.message.content, c.finish_reason) for c in chat.choices] + [(c.text, c.finish_reason)
                                                                               for c in comp.choices]
    for text, reason in outputs:
        assert reason == "stop", (text, reason)  # bounded schemas finish
        _check_json(text, schema)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, seed=13, max_tokens=90, stream=True, response_format=_schema_format(schema),
        extra_body=COMPACT) if chunk.choices)
    _check_json(streamed, schema)


def test_every_source_of_a_json_schema(client):
    """vLLM's `structured_outputs.json` and `guided_json` (dict or text) constrain like response_format."""
    schema = SCHEMAS[0]
    for extra in ({"structured_outputs": {"json": schema, "disable_any_whitespace": True}},
                  {"guided_json": schema, "guided_whitespace_pattern": ""},
                  {"guided_json": json.dumps(schema), "guided_whitespace_pattern": "",
                   "guided_decoding_backend": "auto"}):
        res = client.completions.create(model=MODEL, prompt="{", n=2, seed=3, max_tokens=60, extra_body=extra)
        for choice in res.choices:
            assert choice.finish_reason == "stop", extra
            _check_json(choice.text, schema)


class Weather(BaseModel):
    city: Literal["Paris", "Rome", "Oslo"]
    sunny: bool
    celsius: Literal[-5, 0, 10, 20]


def test_openai_parse_helper_with_a_pydantic_model(client):
    """`client.chat.completions.parse(response_format=Model)` (strict json_schema) gets a parsed object."""
    res = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Weather, max_tokens=60,
                                        seed=5, extra_body=COMPACT)
    parsed = res.choices[0].message.parsed
    assert isinstance(parsed, Weather) and res.choices[0].finish_reason == "stop"


def test_json_object_outputs_are_objects(client):
    res = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=6, seed=21, max_tokens=100, response_format={"type": "json_object"},
        extra_body={"structured_outputs": {"disable_any_whitespace": True}, "allowed_token_ids": None})
    finished = [c.message.content for c in res.choices if c.finish_reason == "stop"]
    assert finished, [c.message.content for c in res.choices]
    for text in finished:
        assert isinstance(json.loads(text), dict)
    for c in res.choices:  # a cut one is still the start of an object
        assert c.message.content.startswith("{")


REGEXES = [r"[0-9]{3}-[a-z]{2,4}", r"(yes|no|maybe)", r"\d{1,2}(\.[0-9]{2})?", r"[A-Z][a-z]{0,5} [a-z]{1,3}!"]


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex_outputs_match(client, pattern):
    comp = client.completions.create(model=MODEL, prompt="Answer:", n=4, seed=7, max_tokens=30,
                                     extra_body={"guided_regex": pattern})
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, seed=8, max_tokens=30,
                                          extra_body={"structured_outputs": {"regex": pattern}})
    texts = [c.text for c in comp.choices] + [c.message.content for c in chat.choices]
    for text in texts:
        assert re.fullmatch(pattern, text), (pattern, text)


def test_choice_outputs_are_choices(client):
    choices = ["red", "green", "light blue", "{json}"]
    comp = client.completions.create(model=MODEL, prompt="Pick:", n=6, seed=2, max_tokens=10,
                                     extra_body={"guided_choice": choices})
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=4, seed=4, max_tokens=10, stream=False,
                                          extra_body={"structured_outputs": {"choice": choices}})
    for text in [c.text for c in comp.choices] + [c.message.content for c in chat.choices]:
        assert text in choices


@pytest.mark.parametrize("grammar", [
    'root ::= num ("+" num)?\nnum ::= [0-9] [0-9]?',            # GBNF / EBNF
    'start: NUM ("+" NUM)?\nNUM: /[0-9]{1,2}/',                   # Lark
])
def test_grammar_outputs_match(client, grammar):
    for extra in ({"guided_grammar": grammar}, {"structured_outputs": {"grammar": grammar}}):
        res = client.completions.create(model=MODEL, prompt="Sum:", n=4, seed=9, max_tokens=12, extra_body=extra)
        for c in res.choices:
            assert re.fullmatch(r"[0-9]{1,2}(\+[0-9]{1,2})?", c.text), c.text


def test_constrained_with_logprobs_and_streaming(client):
    pattern = r"[a-z]{2,5} [0-9]"
    res = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, seed=1, max_tokens=20, logprobs=True,
                                         top_logprobs=2, extra_body={"guided_regex": pattern, "return_token_ids": True})
    for c in res.choices:
        assert re.fullmatch(pattern, c.message.content)
        assert len(c.logprobs.content) == len(c.token_ids)
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(model=MODEL, prompt="x", n=2, seed=1, max_tokens=20, stream=True,
                                           extra_body={"guided_regex": pattern}):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert all(re.fullmatch(pattern, t) for t in texts.values()), texts


PLAIN_PROMPTS = ["The quick brown fox", "import os", "Simple is better than complex.", "Return a new dictionary"]


def test_plain_greedy_requests_keep_their_tokens_beside_constrained_ones(server, offline, http):
    """Constrained rows share steps with free ones; the free ones' tokens equal the offline run's."""
    refs = offline.generate(PLAIN_PROMPTS, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
                            use_tqdm=False)

    async def run():
        client = async_client(server)
        async with client:
            plain = [client.completions.create(model=MODEL, prompt=p, max_tokens=20, temperature=0.0,
                                               extra_body={"ignore_eos": True, "return_token_ids": True})
                     for p in PLAIN_PROMPTS]
            constrained = [client.completions.create(model=MODEL, prompt=p, max_tokens=40, n=2, seed=i,
                                                     extra_body={**COMPACT, "response_format": _schema_format(s)})
                           for i, (p, s) in enumerate(zip(PLAIN_PROMPTS, SCHEMAS))]
            constrained += [client.completions.create(model=MODEL, prompt=p, max_tokens=20, seed=9,
                                                      extra_body={"guided_regex": REGEXES[0]}) for p in PLAIN_PROMPTS]
            return await asyncio.wait_for(asyncio.gather(*plain, *constrained), REQUEST_TIMEOUT_S)

    results = asyncio.run(run())
    for res, ref in zip(results[:4], refs):
        assert res.choices[0].token_ids == ref.outputs[0].token_ids
    for res, schema in zip(results[4:8], SCHEMAS):
        for c in res.choices:
            _check_json(c.text, schema)
    for res in results[8:]:
        assert re.fullmatch(REGEXES[0], res.choices[0].text)
    stats = wait_until_idle(http)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


# ------------------------------------------------------------------------------ logit controls


def test_logit_bias_plus_100_forces_its_token(client, tokenizer):
    token = tokenizer("the", add_special_tokens=False).input_ids[0]
    comp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, n=2, seed=0,
                                     logit_bias={str(token): 100}, extra_body={"return_token_ids": True,
                                                                              "ignore_eos": True})
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0.0,
                                          logit_bias={str(token): 100}, extra_body={"return_token_ids": True,
                                                                                   "ignore_eos": True})
    for ids in [c.token_ids for c in comp.choices] + [chat.choices[0].token_ids]:
        assert ids == [token] * 6


def test_logit_bias_minus_100_bans_tokens(client, offline):
    ref = offline.generate("Simple is", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                           use_tqdm=False)[0].outputs[0].token_ids
    banned = {str(t): -100 for t in set(ref)}
    res = client.completions.create(model=MODEL, prompt="Simple is", max_tokens=8, temperature=0.0, logit_bias=banned,
                                    extra_body={"return_token_ids": True, "ignore_eos": True})
    assert not set(res.choices[0].token_ids) & set(ref)


def test_allowed_token_ids_restrict(client):
    allowed = [40, 41, 300, 301]
    comp = client.completions.create(model=MODEL, prompt="Hi", max_tokens=8, n=4, seed=3,
                                     extra_body={"allowed_token_ids": allowed, "return_token_ids": True,
                                                 "ignore_eos": True})
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, seed=4,
                                          extra_body={"allowed_token_ids": allowed, "return_token_ids": True,
                                                      "ignore_eos": True})
    seen = set()
    for ids in [c.token_ids for c in comp.choices] + [chat.choices[0].token_ids]:
        assert len(ids) == 8 and set(ids) <= set(allowed)
        seen |= set(ids)
    assert len(seen) > 1  # sampled among them, not one forced token


def test_bad_words_never_appear(client, offline, tokenizer):
    ref = offline.generate("import os", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                           use_tqdm=False)[0].outputs[0]
    word = tokenizer.decode([ref.token_ids[0]]).strip()
    assert word
    banned = {tuple(tokenizer(w, add_special_tokens=False).input_ids) for w in (word, " " + word)}
    res = client.completions.create(model=MODEL, prompt="import os", max_tokens=8, temperature=0.0,
                                    extra_body={"bad_words": [word], "return_token_ids": True, "ignore_eos": True})
    ids = res.choices[0].token_ids
    assert ids != ref.token_ids
    for seq in banned:
        assert not any(tuple(ids[i:i + len(seq)]) == seq for i in range(len(ids)))


# ------------------------------------------------------------------------------ errors


def _error(excinfo) -> dict:
    return excinfo.value.response.json()["error"]


@pytest.mark.parametrize("extra,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"structured_outputs": {"regex": "(("}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "start: ("}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"xml": "<a/>"}}, "structured_outputs"),
    ({"structured_outputs": {"disable_any_whitespace": True}}, "structured_outputs"),
    ({"guided_json": {"type": "object", "properties": {"a": {"type": "foo"}}}}, "guided_json"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "[z-a]"}, "guided_regex"),
    ({"guided_grammar": "root ::= (\"a\""}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "structured_outputs": {"regex": "b"}}, "guided_regex"),
    ({"guided_decoding_backend": "xgrammar", "guided_regex": "a"}, "guided_decoding_backend"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
    ({"logit_bias": {"5": float("inf")}}, "logit_bias"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [10 ** 7]}, "allowed_token_ids"),
    ({"bad_words": [" "]}, "bad_words"),
    ({"bad_words": ["w"] * 1000}, "bad_words"),
    ({"logit_bias": {str(i): 1 for i in range(2000)}}, "logit_bias"),
])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_bad_constraints_are_400s_naming_the_field(client, http, extra, param, endpoint):
    body = dict(model=MODEL, max_tokens=4, **extra)
    body.update(prompt="hi") if endpoint == "completions" else body.update(messages=MESSAGES)
    path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
    res = http.post(path, content=json.dumps(body, allow_nan=True), headers={"Content-Type": "application/json"})
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param, res.json()


def test_a_failing_grammar_is_refused_fast(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4,
                                  extra_body={"guided_json": {"type": "integer", "minimum": 5, "maximum": 1}})
    assert "guided_json" in _error(info)["message"]
