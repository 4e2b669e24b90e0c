"""Tool calling and reasoning through the chat endpoint, with the official openai client.

On the session server (no tool flags): "required" and named tool choices are enforced by the
JSON-schema constraint over the tools' parameters; "auto" is a 400 as in vLLM. On the tool
server (`--enable-auto-tool-choice --tool-call-parser hermes --reasoning-parser qwen3`), outputs
are forced into the hermes format or into `<think>` sections with a grammar (the weights are
random), then read back as tool calls and reasoning, whole and streamed; its chat template
renders tools, tool calls and tool results, so what reaches the template is visible.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import AUTH, MODEL

COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}
CLOSED = {"structured_outputs": {"disable_any_whitespace": True, "disable_additional_properties": True}}
MESSAGES = [{"role": "user", "content": "What is the weather?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "pattern": "^[A-Za-z]{1,4}$"}},
                   "required": ["zone"], "additionalProperties": False}}}
PING = {"type": "function", "function": {"name": "ping"}}  # no parameters: called with {}
TOOLS = [WEATHER, CLOCK, PING]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object", "properties": {},
                                                                     "additionalProperties": False}
           for t in TOOLS}


def _check_calls(calls, names=None) -> None:
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
        assert call.function.name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in calls}) == len(calls)


def _streamed(client, **request):
    """The final completion the openai client reassembles from the stream."""
    with client.chat.completions.stream(**request) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion()


def _same_calls(a, b) -> bool:
    return [(c.function.name, c.function.arguments) for c in a] == [(c.function.name, c.function.arguments) for c in b]


def test_required_tool_choice_calls_valid_tools(client):
    request = dict(model=MODEL, messages=MESSAGES, tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=100,
                   extra_body=COMPACT)
    res = client.chat.completions.create(n=4, seed=5, **request)
    finished = [c for c in res.choices if c.finish_reason != "length"]  # parallel calls: any number of them
    assert finished
    for choice in finished:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        _check_calls(choice.message.tool_calls)
    # the first seed whose completion finishes, streamed and not
    seed, whole = next((s, w) for s in range(5, 25)
                       if (w := client.chat.completions.create(seed=s, **request).choices[0]).finish_reason != "length")
    streamed = _streamed(client, seed=seed, **request).choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    _check_calls(streamed.message.tool_calls)
    assert _same_calls(streamed.message.tool_calls, whole.message.tool_calls)


def test_required_without_parallel_calls_makes_one_call(client):
    res = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[WEATHER, CLOCK],
                                         tool_choice="required", parallel_tool_calls=False, n=4, seed=8,
                                         max_tokens=100, extra_body=COMPACT)
    for choice in res.choices:
        assert len(choice.message.tool_calls) == 1
        _check_calls(choice.message.tool_calls)


@pytest.mark.parametrize("name", ["get_weather", "get_time", "ping"])
def test_named_tool_choice_calls_that_tool(client, name):
    request = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=60, seed=3, extra_body=CLOSED,
                   tool_choice={"type": "function", "function": {"name": name}})
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.finish_reason == "stop"  # OpenAI's (and vLLM's) finish reason of a named call
    assert [c.function.name for c in whole.message.tool_calls] == [name]
    _check_calls(whole.message.tool_calls, [name])
    streamed = _streamed(client, **request).choices[0]
    assert _same_calls(streamed.message.tool_calls, whole.message.tool_calls)


def test_tool_choice_none_is_plain_content(client, offline, tokenizer):
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    ref = offline.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0.0, max_tokens=8),
                           use_tqdm=False)[0].outputs[0]
    res = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                         max_tokens=8, temperature=0.0)
    assert res.choices[0].message.content == ref.text and not res.choices[0].message.tool_calls
    assert res.choices[0].finish_reason == ref.finish_reason


@pytest.mark.parametrize("fields,param,fragment", [
    (dict(tools=TOOLS), "tool_choice", "--enable-auto-tool-choice"),  # no tool_choice with tools means "auto"
    (dict(tools=TOOLS, tool_choice="auto"), "tool_choice", "--tool-call-parser"),
    (dict(tools=[], tool_choice="none"), "tools", "empty"),
    (dict(tool_choice="required"), "tool_choice", "tools"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice", "nope"),
    (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice", None),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "tool_choice", None),
    (dict(tools=[WEATHER, WEATHER], tool_choice="required"), "tools", "twice"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
          tool_choice="required"), "tools", None),
    (dict(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(200)], tool_choice="none"),
     "tools", "--max-tools"),
    (dict(tools=[{"type": "retrieval"}], tool_choice="none"), "tools", None),
])
def test_bad_tool_requests_are_400s(client, fields, param, fragment):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, **fields)
    error = info.value.response.json()["error"]
    assert error["param"] == param, error
    if fragment is not None:
        assert fragment in error["message"]


def _hermes_grammar(prefix: str = "", calls: int = 1, tools=(WEATHER,)) -> str:
    """A Lark grammar whose outputs are hermes tool-call blocks of `tools` (compact JSON)."""
    variants = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                   "arguments": t["function"]["parameters"]},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = {"anyOf": variants, "x-guidance": {"whitespace_flexible": False}}
    block = '"<tool_call>" call "</tool_call>"'
    return "\n".join([f"start: {prefix}{' '.join([block] * calls)}", f"call: %json {json.dumps(schema)}",
                      'TEXT: /[a-z]{1,6}/'])


def test_auto_tool_calls_in_the_hermes_format(tool_client):
    request = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=120, seed=2,
                   extra_body={"structured_outputs": {"grammar": _hermes_grammar()}})
    whole = tool_client.chat.completions.create(**request).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    assert [c.function.name for c in whole.message.tool_calls] == ["get_weather"]
    _check_calls(whole.message.tool_calls)
    streamed = _streamed(tool_client, **request).choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert _same_calls(streamed.message.tool_calls, whole.message.tool_calls)


def test_auto_content_before_calls_and_parallel_calls(tool_client):
    grammar = _hermes_grammar(prefix="TEXT ", calls=2, tools=(WEATHER, CLOCK))
    request = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=160, seed=4,
                   extra_body={"structured_outputs": {"grammar": grammar}})
    whole = tool_client.chat.completions.create(**request).choices[0]
    assert whole.message.content and whole.message.content.isalpha()
    assert len(whole.message.tool_calls) == 2
    _check_calls(whole.message.tool_calls)
    streamed = _streamed(tool_client, **request).choices[0]
    assert streamed.message.content == whole.message.content
    assert _same_calls(streamed.message.tool_calls, whole.message.tool_calls)
    single = tool_client.chat.completions.create(parallel_tool_calls=False, **request).choices[0]
    assert _same_calls(single.message.tool_calls, whole.message.tool_calls[:1])
    single_streamed = _streamed(tool_client, parallel_tool_calls=False, **request).choices[0]
    assert _same_calls(single_streamed.message.tool_calls, whole.message.tool_calls[:1])


def test_auto_without_a_call_is_content(tool_client):
    res = tool_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=20, seed=1,
                                              extra_body={"guided_regex": "[a-z]{3,8}"})
    choice = res.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls and choice.message.content.isalpha()


def test_reasoning_content_whole_and_streamed(tool_client):
    pattern = "<think>[a-z]{2,6}</think>[a-z]{2,5}"
    request = dict(model=MODEL, messages=MESSAGES, max_tokens=40, seed=6, extra_body={"guided_regex": pattern})
    message = tool_client.chat.completions.create(**request).choices[0].message
    extras = message.model_extra
    assert extras["reasoning_content"].isalpha() and message.content.isalpha()
    assert extras["reasoning"] == extras["reasoning_content"]
    reasoning, content = "", ""
    for chunk in tool_client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
    assert (reasoning, content) == (extras["reasoning_content"], message.content)


def test_reasoning_then_a_tool_call(tool_client):
    grammar = _hermes_grammar(prefix='"<think>" TEXT "</think>" ')
    res = tool_client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=140, seed=7,
                                              extra_body={"structured_outputs": {"grammar": grammar}})
    message = res.choices[0].message
    assert message.model_extra["reasoning_content"].isalpha()
    _check_calls(message.tool_calls)
    assert res.choices[0].finish_reason == "tool_calls"


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 2})}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def test_tools_and_tool_messages_reach_the_chat_template(tool_server, tool_client):
    import httpx

    with httpx.Client(base_url=tool_server.url, headers=AUTH, trust_env=False, timeout=60) as http:
        res = http.post("/tokenize", json={"model": MODEL, "messages": HISTORY, "tools": TOOLS})
        assert res.status_code == 200, res.text
        ids = res.json()["tokens"]
        text = http.post("/detokenize", json={"model": MODEL, "tokens": ids}).json()["prompt"]
    assert "tools: get_weather get_time ping" in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>' in text
    assert "<tool_response call_1>sunny</tool_response>" in text and text.endswith("<|assistant|>\n")
    chat = tool_client.chat.completions.create(model=MODEL, messages=HISTORY, tools=TOOLS, tool_choice="none",
                                               max_tokens=2)
    assert chat.usage.prompt_tokens == len(ids)
    bad = [*HISTORY[:1], {**HISTORY[1], "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        tool_client.chat.completions.create(model=MODEL, messages=bad, max_tokens=2)
    assert info.value.response.json()["error"]["param"] == "messages"
