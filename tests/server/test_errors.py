"""Errors in OpenAI's shape with the right status (401, 404, 400, 500); the server keeps serving."""

from __future__ import annotations

import contextlib

import httpx
import openai
import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import API_KEY, MODEL, wait_until_idle

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


def test_api_key(server, http, anon):
    with httpx.Client(trust_env=False) as transport:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0, http_client=transport)
        with pytest.raises(openai.AuthenticationError) as info:
            wrong.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert info.value.status_code == 401 and error_of(info.value)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    missing = anon.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert missing.status_code == 401  # checked before the body is validated
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert anon.get("/v1/models", headers={"Authorization": f"Basic {API_KEY}"}).status_code == 401
    assert http.get("/v1/models", headers=AUTH).status_code == 200
    assert anon.get("/health").status_code == 200  # the one open route
    for path in ("/metrics", "/debug/stats", "/version", "/v1/models"):
        assert anon.get(path).status_code == 401 and http.get(path).status_code == 200


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert error_of(info.value) == {"message": "The model `no-such-model` does not exist.",
                                    "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


BAD_COMPLETIONS = [
    (dict(temperature=-1.0), "temperature", None),
    (dict(top_p=0.0), "top_p", None),
    (dict(n=0), "n", None),
    (dict(max_tokens=0), "max_tokens", None),
    (dict(logprobs=21), "logprobs", None),
    (dict(presence_penalty=3.0), "presence_penalty", None),
    (dict(best_of=1, n=2), "best_of", None),
    (dict(extra_body={"top_k": -5}), "top_k", None),
    (dict(extra_body={"min_tokens": 50}, max_tokens=4), "min_tokens", None),
    (dict(prompt="word " * 200), "prompt", "context_length_exceeded"),
    (dict(prompt=[[1, 2], [1, 2] * 100]), "prompt", "context_length_exceeded"),
    (dict(prompt=""), "prompt", None),
    (dict(prompt=[]), "prompt", None),
    (dict(prompt=[1, 10 ** 6]), None, None),  # outside the vocabulary
    (dict(prompt=123), "prompt", None),  # wrong type: the validation error, as a 400
    (dict(prompt=["a", 1]), "prompt", None),
    (dict(stream=True, best_of=2), "best_of", None),
    (dict(logit_bias={"one": 5}), "logit_bias", None),
    (dict(logit_bias={"1": 500}), "logit_bias", None),
    (dict(logit_bias={str(10 ** 6): 1}), "logit_bias", None),
    (dict(suffix="!"), "suffix", None),
    (dict(stream_options={"include_usage": True}), "stream_options", None),
    (dict(stop=[""]), "stop", None),
]


@pytest.mark.parametrize("fields,param,code", BAD_COMPLETIONS, ids=[str(b[0])[:40] for b in BAD_COMPLETIONS])
def test_invalid_completion_is_400(client, fields, param, code):
    request = dict(model=MODEL, prompt="hello", max_tokens=4)
    request.update(fields)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**request)
    error = error_of(info.value)
    assert info.value.status_code == 400 and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


BAD_CHATS = [
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(logprobs=True, top_logprobs=30), "top_logprobs"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tool_choice"),  # "auto" needs the flags
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}),
     "response_format"),
    (dict(temperature=-0.5), "temperature"),
    (dict(messages=[{"role": "user", "content": "word " * 200}]), "messages"),
]


@pytest.mark.parametrize("fields,param", BAD_CHATS, ids=[str(b[0])[:40] for b in BAD_CHATS])
def test_invalid_chat_is_400(client, fields, param):
    request = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    request.update(fields)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**request)
    assert error_of(info.value)["param"] == param


def test_malformed_json_is_400(http):
    res = http.post("/v1/completions", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert res.status_code == 400 and res.json()["error"]["type"] == "invalid_request_error"
    res = http.post("/v1/completions", json={"model": MODEL}, headers=AUTH)  # no prompt
    assert res.status_code == 400 and res.json()["error"]["param"] == "prompt"
    assert http.get("/v1/nothing-here", headers=AUTH).status_code == 404


@contextlib.contextmanager
def failing(target, name: str, error: Exception, after_calls: int = 0, times: int | None = None):
    """Makes `target.name` raise `error` after `after_calls` good calls, `times` times (None: for
    ever); restores it afterwards.
    NOTE: set while the server is idle; the engine thread reads the attribute only when it runs."""
    original = getattr(target, name)
    calls = {"n": 0, "failed": 0}

    def faulty(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after_calls and (times is None or calls["failed"] < times):
            calls["failed"] += 1
            raise error
        return original(*args, **kwargs)

    setattr(target, name, faulty)
    try:
        yield calls
    finally:
        delattr(target, name)  # back to the class's method


def test_engine_failures_are_500_and_the_server_keeps_serving(server, client, http, offline):
    engine = server.app.state.server.engine._engine
    ref = offline.generate("Simple is better", SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)[0]
    request = dict(model=MODEL, prompt="Simple is better", max_tokens=8, temperature=0.0)
    wait_until_idle(http)
    # the model step fails between the scheduler's schedule() and update()
    with failing(engine.runner, "execute_model", RuntimeError("injected step failure")):
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(**request)
    error = error_of(info.value)
    assert info.value.status_code == 500 and error["type"] == "server_error" and "injected" in error["message"]
    with failing(engine, "add_request", RuntimeError("injected add failure")):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    with failing(engine.runner, "execute_model", RuntimeError("injected mid-stream failure"), after_calls=3):
        stream = client.completions.create(stream=True, **request)
        with pytest.raises(openai.APIError, match="injected mid-stream failure"):
            for _ in stream:
                pass
    stats = wait_until_idle(http)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]  # failed requests freed their blocks
    assert client.completions.create(**request).choices[0].text == ref.outputs[0].text
    assert http.get("/health").status_code == 200
