"""tool_choice schemas (required / named) enforced by the grammar, and the parsers of what they produce."""

from __future__ import annotations

import itertools
import json

import jsonschema
import numpy as np
import pytest

from pagedjax.structured_output import StructuredOutputsParams, structured_outputs_from_request
from pagedjax.tool_parsers import (NamedToolCallParser, RequiredToolCallParser, merge_deltas, normalize_tool_choice,
                                   tool_calls_from_delta, tool_choice_json_schema)
from tests.structured_output.walk import random_walk

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "unit": {"type": "string", "enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
MATH = {"type": "object", "properties": {"a": {"$ref": "#/$defs/small"}, "b": {"$ref": "#/$defs/small"}},
        "required": ["a", "b"], "additionalProperties": False,
        "$defs": {"small": {"type": "integer", "minimum": 0, "maximum": 99}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": MATH}},
    {"type": "function", "function": {"name": "ping"}},   # no parameters: an empty object
]
PARAMETERS = {"get_weather": WEATHER, "add": MATH, "ping": {"type": "object", "properties": {}}}


def test_required_schema_has_vllms_shape():
    schema = tool_choice_json_schema(TOOLS, "required")
    assert schema["type"] == "array" and schema["minItems"] == 1
    variants = schema["items"]["anyOf"]
    assert [v["properties"]["name"] for v in variants] == [{"type": "string", "enum": [t["function"]["name"]]}
                                                            for t in TOOLS]
    assert all(v["required"] == ["name", "parameters"] for v in variants)
    assert schema["$defs"] == MATH["$defs"] and "$defs" not in variants[1]["properties"]["parameters"]
    assert variants[2]["properties"]["parameters"] == {"type": "object", "properties": {}}
    assert "$defs" in TOOLS[1]["function"]["parameters"]   # the request's tools are not modified


def test_named_and_unconstrained_choices():
    assert tool_choice_json_schema(TOOLS, {"type": "function", "function": {"name": "add"}}) == MATH
    assert tool_choice_json_schema(TOOLS, "auto") is None and tool_choice_json_schema(TOOLS, "none") is None
    assert tool_choice_json_schema(None, None) is None
    assert normalize_tool_choice(None, TOOLS) == "auto" and normalize_tool_choice(None, None) == "none"


def test_conflicting_defs_are_refused():
    other = {"type": "object", "properties": {"x": {"$ref": "#/$defs/small"}}, "$defs": {"small": {"type": "string"}}}
    tools = TOOLS + [{"type": "function", "function": {"name": "other", "parameters": other}}]
    with pytest.raises(ValueError, match="small"):
        tool_choice_json_schema(tools, "required")


@pytest.mark.parametrize("tools, choice, match", [
    (TOOLS, "sometimes", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "missing"}}, r"tool_choice\.function\.name"),
    (TOOLS, {"type": "function"}, "tool_choice"),
    (None, "required", "needs tools"),
    ({"type": "function"}, "auto", "tools must be a list"),
    ([{"type": "retrieval", "function": {"name": "f"}}], "auto", r"tools\[0\]\.type"),
    ([{"type": "function"}], "auto", r"tools\[0\]\.function"),
    ([{"type": "function", "function": {"name": ""}}], "auto", r"tools\[0\]\.function\.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "auto", r"tools\[0\]\.function\.parameters"),
    ([TOOLS[0], TOOLS[0]], "auto", r"tools\[1\]\.function\.name"),
])
def test_invalid_tools_and_choices_name_the_field(tools, choice, match):
    with pytest.raises(ValueError, match=match):
        tool_choice_json_schema(tools, choice)


def counter_ids():
    counter = itertools.count()
    return lambda: f"call{next(counter)}"


def streamed_calls(parser, text):
    deltas = [parser.feed(c) for c in text] + [parser.finish()]
    return [(c.function.name, c.function.arguments) for c in tool_calls_from_delta(merge_deltas(deltas))]


def test_required_outputs_of_random_walks_parse_and_validate(compiler, tok, info):
    params = structured_outputs_from_request(tool_schema=tool_choice_json_schema(TOOLS, "required"))
    names_seen = set()
    for seed in range(8):
        tokens, _ = random_walk(compiler.matcher(params), tok, info, np.random.default_rng(seed), max_steps=600)
        text = tok.decode(tokens)
        result = RequiredToolCallParser(make_id=counter_ids()).extract_tool_calls(text)
        assert result.tools_called and result.content is None and result.tool_calls
        for call in result.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
            names_seen.add(call.function.name)
        assert streamed_calls(RequiredToolCallParser(make_id=counter_ids()), text) == \
            [(c.function.name, c.function.arguments) for c in result.tool_calls]
    assert len(names_seen) >= 2


def test_named_outputs_of_random_walks_validate(compiler, tok, info):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    params = StructuredOutputsParams(json=tool_choice_json_schema(TOOLS, choice))
    for seed in range(5):
        tokens, _ = random_walk(compiler.matcher(params), tok, info, np.random.default_rng(seed))
        text = tok.decode(tokens)
        (call,) = NamedToolCallParser("get_weather").extract_tool_calls(text).tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        assert streamed_calls(NamedToolCallParser("get_weather"), text) == [("get_weather", text)]


def test_required_parser_on_crafted_text():
    text = '[{"name": "add", "parameters": {"a": 1, "b": 2}}, {"name": "ping", "parameters": {}}]'
    calls = RequiredToolCallParser(make_id=counter_ids()).extract_tool_calls(text).tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call0", "add", '{"a": 1, "b": 2}'), ("call1", "ping", "{}")]
    assert not RequiredToolCallParser().extract_tool_calls("[]").tools_called
    assert not RequiredToolCallParser().extract_tool_calls('{"name": "add"}').tools_called
    with pytest.raises(ValueError, match="function_name"):
        NamedToolCallParser("")
    assert NamedToolCallParser("f").finish().tool_calls[0].function.name == "f"   # empty output: still one call
