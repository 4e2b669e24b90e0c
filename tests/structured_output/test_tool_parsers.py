"""Tool-call parsers on crafted model outputs: whole-text results, and streamed deltas that add up to them."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from pagedjax.tool_parsers import (DeltaMessage, get_tool_parser, merge_deltas, parser_for_tool_choice,
                                   tool_calls_from_delta)
from pagedjax.tool_parsers.mistral import mistral_tool_call_id

ARGS = {"city": "Paris", "days": 3, "units": ["c", "f"], "note": "é \"q\" \\ 😀", "deep": {"x": [1.5, None, True]}}
A = json.dumps(ARGS, ensure_ascii=False)

# (parser, output, expected content, expected [(name, arguments dict)])
CASES = [
    ("hermes", "plain text, no tools", "plain text, no tools", []),
    ("hermes", f'<tool_call>\n{{"name": "get_weather", "arguments": {A}}}\n</tool_call>', None,
     [("get_weather", ARGS)]),
    ("hermes", f'Let me check.\n<tool_call>{{"arguments": {A}, "name": "f"}}</tool_call>\n<tool_call>\n'
               '{"name": "g", "arguments": {}}\n</tool_call>', "Let me check.\n", [("f", ARGS), ("g", {})]),
    ("hermes", '<tool_call>{"name": "no_args"}</tool_call>', None, [("no_args", {})]),
    ("hermes", '<tool_call>{"name": "open", "arguments": {"s": "</tool_call> inside"}}', None,
     [("open", {"s": "</tool_call> inside"})]),
    ("hermes", "a <tool_ca b", "a <tool_ca b", []),
    ("qwen3", f'<tool_call>\n{{"name": "q", "arguments": {A}}}\n</tool_call>', None, [("q", ARGS)]),
    ("llama3_json", f'{{"name": "get_weather", "parameters": {A}}}', None, [("get_weather", ARGS)]),
    ("llama3_json", f'<|python_tag|>{{"name": "a", "arguments": {{"x": 1}}}}; {{"name": "b", "parameters": {A}}}',
     None, [("a", {"x": 1}), ("b", ARGS)]),
    ("llama3_json", ' \n{"name": "a", "parameters": {}};', None, [("a", {})]),
    ("llama3_json", "The answer is {not a call}", "The answer is {not a call}", []),
    ("llama3_json", "  <|python", "  <|python", []),
    ("llama4_json", '{"name": "z", "parameters": {"k": "v"}}', None, [("z", {"k": "v"})]),
    ("mistral", f'[TOOL_CALLS] [{{"name": "a", "arguments": {A}}}, {{"name": "b", "arguments": {{}}}}]', None,
     [("a", ARGS), ("b", {})]),
    ("mistral", f'Checking. [TOOL_CALLS]get_weather[ARGS]{A}[TOOL_CALLS]other[ARGS] {{"n": 2}}', "Checking. ",
     [("get_weather", ARGS), ("other", {"n": 2})]),
    ("mistral", 'no calls [TOOL', "no calls [TOOL", []),
]


def counter_ids():
    counter = itertools.count()
    return lambda: f"call{next(counter)}"


def expected_calls(calls):
    return [(name, json.dumps(args, ensure_ascii=False)) for name, args in calls]


def streamed(parser_cls, text, chunks):
    parser = parser_cls(make_id=counter_ids())
    deltas, pos = [], 0
    for n in chunks:
        deltas.append(parser.feed(text[pos:pos + n]))
        pos += n
    deltas.append(parser.feed(text[pos:]))
    deltas.append(parser.finish())
    return deltas


@pytest.mark.parametrize("name, text, content, calls", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_whole_text_extraction(name, text, content, calls):
    result = get_tool_parser(name)(make_id=counter_ids()).extract_tool_calls(text)
    assert result.content == content
    assert result.tools_called == bool(calls)
    assert [(c.function.name, c.function.arguments) for c in result.tool_calls] == expected_calls(calls)
    assert [c.id for c in result.tool_calls] == [f"call{i}" for i in range(len(calls))]
    for call in result.tool_calls:
        assert json.loads(call.function.arguments) == dict(calls)[call.function.name]


@pytest.mark.parametrize("chunking", ["chars", "random", "whole"])
@pytest.mark.parametrize("name, text, content, calls", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_streaming_adds_up_to_the_whole_result(name, text, content, calls, chunking):
    rng = random.Random(len(text))
    chunks = {"chars": [1] * len(text), "random": [rng.randint(1, 9) for _ in range(len(text))], "whole": []}[chunking]
    deltas = streamed(get_tool_parser(name), text, chunks)
    merged = merge_deltas(deltas)
    whole = get_tool_parser(name)(make_id=counter_ids()).extract_tool_calls(text)
    assert (merged.content if merged else None) == whole.content
    got = [(c.function.name, c.function.arguments) for c in tool_calls_from_delta(merged)]
    assert got == [(c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert [c.index for c in (merged.tool_calls if merged else ())] == list(range(len(calls)))


def test_stream_delta_shapes_follow_openai():
    text = f'Hi<tool_call>{{"name": "get_weather", "arguments": {A}}}</tool_call>'
    deltas = [d for d in streamed(get_tool_parser("hermes"), text, [1] * len(text)) if d is not None]
    tool_deltas = [t for d in deltas for t in d.tool_calls]
    header = tool_deltas[0]
    assert header.to_openai() == {"index": 0, "id": "call0", "type": "function",
                                  "function": {"name": "get_weather", "arguments": ""}}
    assert all(t.id is None and t.function.name is None and t.function.arguments for t in tool_deltas[1:])
    assert len(tool_deltas) > 10   # arguments arrive in pieces, not at the end
    assert deltas[0].to_openai() == {"content": "H"}
    assert all(not d.content for d in deltas[2:])


def test_name_waits_when_arguments_come_first():
    text = '<tool_call>{"arguments": {"a": [1, 2]}, "name": "late"}</tool_call>'
    deltas = [d for d in streamed(get_tool_parser("hermes"), text, [1] * len(text)) if d is not None]
    first = deltas[0].tool_calls[0]
    assert first.function.name == "late" and first.id == "call0"
    assert merge_deltas(deltas).tool_calls[0].function.arguments == '{"a": [1, 2]}'


@pytest.mark.parametrize("name, text", [
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>'),     # unbalanced
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>'),                       # no name
    ("hermes", '<tool_call>{"name": 3}</tool_call>'),
    ("hermes", '<tool_call>["f"]</tool_call>'),
    ("hermes", '<tool_call>{"name": "f"} trailing</tool_call>'),
    ("hermes", '<tool_call>{"name": "f", "arguments": {}, "parameters": {}}</tool_call>'),
    ("llama3_json", '{"name": "f", "parameters": {}} and more'),
    ("llama3_json", '<|python_tag|>print("hi")'),
    ("mistral", '[TOOL_CALLS] [{"name": "a"}] extra'),
    ("mistral", '[TOOL_CALLS]bad name[ARGS]{}'),
])
def test_malformed_calls_fall_back_to_content_and_do_not_break_streaming(name, text):
    result = get_tool_parser(name)().extract_tool_calls(text)
    assert not result.tools_called and result.tool_calls == ()
    assert result.content == (text.replace("[TOOL_CALLS]", "").strip() if name == "mistral" else text)
    deltas = streamed(get_tool_parser(name), text, [1] * len(text))
    assert all(d is None or isinstance(d, DeltaMessage) for d in deltas)


def test_mistral_ids_are_nine_alphanumerics():
    text = '[TOOL_CALLS] [{"name": "a", "arguments": {}}]'
    call = get_tool_parser("mistral")().extract_tool_calls(text).tool_calls[0]
    assert len(call.id) == 9 and call.id.isalnum()
    assert len(mistral_tool_call_id()) == 9
    assert get_tool_parser("mistral").needs_special_tokens and not get_tool_parser("hermes").needs_special_tokens


def test_registry_and_parser_for_tool_choice():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(ValueError, match="tool_call_parser"):
        get_tool_parser("nope")
    assert parser_for_tool_choice("none", tools, "hermes") is None
    assert parser_for_tool_choice("auto", tools, None) is None
    assert parser_for_tool_choice(None, tools, "hermes").name == "hermes"
    assert parser_for_tool_choice("required", tools, "hermes").name == "required"
    named = parser_for_tool_choice({"type": "function", "function": {"name": "f"}}, tools, "hermes")
    assert named.name == "named" and named.function_name == "f"
