"""OpenAI's nullable fields: an explicit JSON null means the field's default, on both endpoints
(`max_tokens: null` in completions means as many tokens as the context leaves, as in vLLM)."""

from __future__ import annotations

import pytest

from tests.server.helpers import MODEL

COMMON_NULLS = dict(n=None, best_of=None, temperature=None, top_p=None, stop=None, stream=None, stream_options=None,
                    presence_penalty=None, frequency_penalty=None, logit_bias=None, user=None, response_format=None,
                    top_k=None, min_p=None, repetition_penalty=None, min_tokens=None, ignore_eos=None,
                    stop_token_ids=None, skip_special_tokens=None, spaces_between_special_tokens=None,
                    include_stop_str_in_output=None, allowed_token_ids=None, bad_words=None,
                    structured_outputs=None, guided_json=None, guided_regex=None, guided_choice=None,
                    guided_grammar=None, guided_whitespace_pattern=None, guided_decoding_backend=None)
COMPLETION_NULLS = dict(COMMON_NULLS, logprobs=None, echo=None, suffix=None)
CHAT_NULLS = dict(COMMON_NULLS, logprobs=None, top_logprobs=None, max_tokens=None, tools=None, tool_choice=None,
                  parallel_tool_calls=None, add_generation_prompt=None, chat_template_kwargs=None)
MESSAGES = [{"role": "user", "content": "Say something."}]


def test_completion_nulls_mean_defaults(http):
    base = dict(model=MODEL, prompt="The quick brown fox", max_tokens=8, seed=42, return_token_ids=True)
    plain = http.post("/v1/completions", json=base)
    nulls = http.post("/v1/completions", json={**base, **COMPLETION_NULLS})
    assert plain.status_code == nulls.status_code == 200, nulls.text
    assert nulls.json()["choices"] == plain.json()["choices"]  # seeded: the same tokens, so the same defaults


def test_chat_nulls_mean_defaults(http):
    base = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=8, seed=42, return_token_ids=True)
    plain = http.post("/v1/chat/completions", json=base)
    nulls = http.post("/v1/chat/completions", json={**base, **CHAT_NULLS})
    assert plain.status_code == nulls.status_code == 200, nulls.text
    assert nulls.json()["choices"] == plain.json()["choices"]
    # the openai client sends its own nulls for "not given" when asked to
    assert http.post("/v1/chat/completions", json={**base, "max_completion_tokens": None, "max_tokens": 3}
                     ).json()["usage"]["completion_tokens"] <= 3


def test_null_max_tokens_is_the_room_left(http):
    res = http.post("/v1/completions", json=dict(model=MODEL, prompt="hi", max_tokens=None, temperature=0.0,
                                                 ignore_eos=True))
    assert res.status_code == 200
    assert res.json()["usage"]["completion_tokens"] == 128 - res.json()["usage"]["prompt_tokens"]


def test_nested_nulls(http):
    body = dict(model=MODEL, prompt="a", max_tokens=2, stream=True, stream_options={"include_usage": None})
    res = http.post("/v1/completions", json=body)
    assert res.status_code == 200 and res.text.rstrip().endswith("data: [DONE]")
    schema = {"type": "json_schema", "json_schema": {"name": "x", "description": None, "strict": None,
                                                     "schema": {"enum": ["a", "b"]}}}
    res = http.post("/v1/completions", json=dict(model=MODEL, prompt="a", max_tokens=4, response_format=schema))
    assert res.status_code == 200 and res.json()["choices"][0]["text"] in ('"a"', '"b"')


@pytest.mark.parametrize("field", ["messages", "prompt"])
def test_null_required_field_is_a_400(http, field):
    body = dict(model=MODEL, max_tokens=2, **{field: None})
    path = "/v1/chat/completions" if field == "messages" else "/v1/completions"
    res = http.post(path, json=body)
    assert res.status_code == 400 and res.json()["error"]["param"] == field
