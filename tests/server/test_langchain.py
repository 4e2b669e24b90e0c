"""LangChain's `ChatOpenAI` against the server: `with_structured_output` in both modes (json_schema,
function_calling) and `bind_tools` ("required", a named tool, and "auto" on the tool server).

The weights are random, so compact JSON (`disable_any_whitespace`, through `extra_body`) keeps
the constrained outputs short enough to finish.
"""

from __future__ import annotations

from typing import Literal

import httpx
import langchain_openai  # in the test extra
import pytest
from pydantic import BaseModel, Field

from tests.server.helpers import API_KEY, MODEL, REQUEST_TIMEOUT_S

COMPACT = {"structured_outputs": {"disable_any_whitespace": True, "disable_additional_properties": True}}


class Weather(BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "Rome", "Oslo"] = Field(description="the city")
    sunny: bool


def get_time(zone: Literal["UTC", "CET"]) -> str:
    """The time in a time zone."""
    return "noon"


def _chat(server, **kwargs):
    return langchain_openai.ChatOpenAI(
        model=MODEL, base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S,
        temperature=1.0, seed=3, max_tokens=80, extra_body=COMPACT, http_client=httpx.Client(trust_env=False),
        **kwargs)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(server, method):
    llm = _chat(server).with_structured_output(Weather, method=method)
    for question in ("Weather in Rome?", "And in Oslo?"):
        result = llm.invoke(question)
        assert isinstance(result, Weather)


def test_with_structured_output_json_schema_dict(server):
    schema = {"title": "answer", "type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"]}
    result = _chat(server).with_structured_output(schema, method="json_schema").invoke("Yes or no?")
    assert isinstance(result, dict) and isinstance(result["yes"], bool)


@pytest.mark.parametrize("tool_choice", ["required", "any", "get_time"])
def test_bind_tools_forced(server, tool_choice):
    message = _chat(server).bind_tools([get_time, Weather], tool_choice=tool_choice).invoke("What time is it?")
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call["name"] in ("get_time", "Weather") and call["id"]
        if call["name"] == "get_time":
            assert call["args"]["zone"] in ("UTC", "CET")
        else:
            Weather(**call["args"])
    if tool_choice == "get_time":
        assert [c["name"] for c in message.tool_calls] == ["get_time"]


def test_bind_tools_auto_on_the_tool_server(tool_server):
    import json

    schema = {"type": "object", "properties": {"name": {"const": "get_time"},
                                               "arguments": {"type": "object", "properties": {
                                                   "zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
                                                   "additionalProperties": False}},
              "required": ["name", "arguments"], "additionalProperties": False,
              "x-guidance": {"whitespace_flexible": False}}
    grammar = f'start: "<tool_call>" call "</tool_call>"\ncall: %json {json.dumps(schema)}'
    llm = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=f"{tool_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S,
        max_tokens=80, extra_body={"structured_outputs": {"grammar": grammar}},
        http_client=httpx.Client(trust_env=False))
    message = llm.bind_tools([get_time]).invoke("What time is it?")  # no tool_choice: "auto"
    assert [c["name"] for c in message.tool_calls] == ["get_time"]
    assert message.tool_calls[0]["args"]["zone"] in ("UTC", "CET")
    assert message.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(llm.bind_tools([get_time]).stream("What time is it?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert [c["name"] for c in merged.tool_calls] == ["get_time"]
    assert merged.tool_calls[0]["args"]["zone"] in ("UTC", "CET")
