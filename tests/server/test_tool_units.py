"""Units of the chat tool plumbing without a server: options, plans, parsers, finish reasons, CLI flags."""

from __future__ import annotations

import argparse

import pytest

from pagedjax.reasoning import DeepSeekR1ReasoningParser, Qwen3ReasoningParser
from pagedjax.server.chat_options import ChatOptions
from pagedjax.server.errors import APIError
from pagedjax.server.limits import ServerLimits
from pagedjax.server.protocol import ChatCompletionRequest
from pagedjax.server.tools import finish_reason, needs_special_tokens, output_parser_factory, plan_tools

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                    "properties": {"a": {"type": "integer"}}}}}
AUTO = ChatOptions(enable_auto_tool_choice=True, tool_call_parser="hermes")


def _request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(enable_auto_tool_choice=True), "tool_call_parser"),
    (dict(tool_call_parser="nope"), "tool_call_parser"),
    (dict(reasoning_parser="nope"), "reasoning_parser"),
    (dict(enable_auto_tool_choice="yes", tool_call_parser="hermes"), "enable_auto_tool_choice"),
])
def test_chat_options_validate(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ChatOptions(**kwargs)


def test_plans():
    limits = ServerLimits()
    none = plan_tools(_request(), ChatOptions(), limits)
    assert none.choice == "none" and none.schema is None and not none.reads_calls
    auto = plan_tools(_request(tools=[TOOL]), AUTO, limits)
    assert auto.choice == "auto" and auto.schema is None and auto.reads_calls
    required = plan_tools(_request(tools=[TOOL], tool_choice="required", parallel_tool_calls=False), ChatOptions(),
                          limits)
    variant = required.schema["items"]["anyOf"][0]
    assert required.schema["maxItems"] == 1 and variant["additionalProperties"] is False
    assert "type" not in required.schema["items"] and variant["type"] == "object"
    named = plan_tools(_request(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}}),
                       ChatOptions(), limits)
    assert named.named and named.schema == TOOL["function"]["parameters"]
    with pytest.raises(APIError) as info:
        plan_tools(_request(tools=[TOOL]), ChatOptions(reasoning_parser="qwen3"), limits)
    assert info.value.param == "tool_choice" and "--enable-auto-tool-choice" in info.value.message
    with pytest.raises(APIError) as info:
        plan_tools(_request(tools=[TOOL, TOOL]), AUTO, ServerLimits(max_tools=1))
    assert info.value.param == "tools"


def test_finish_reasons():
    limits = ServerLimits()
    auto = plan_tools(_request(tools=[TOOL]), AUTO, limits)
    named = plan_tools(_request(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}}), AUTO,
                       limits)
    assert finish_reason(auto, True, "stop") == "tool_calls"
    assert finish_reason(auto, True, "length") == "length" and finish_reason(auto, False, "stop") == "stop"
    assert finish_reason(named, True, "stop") == "stop"  # OpenAI's: a named call ends with "stop"


def test_special_tokens_kept_for_marker_parsers():
    limits = ServerLimits()
    for parser, keeps in (("hermes", True), ("qwen3", True), ("mistral", True), ("llama3_json", False)):
        options = ChatOptions(enable_auto_tool_choice=True, tool_call_parser=parser)
        assert needs_special_tokens(plan_tools(_request(tools=[TOOL]), options, limits), options) is keeps
        assert not needs_special_tokens(plan_tools(_request(tools=[TOOL], tool_choice="required"), options, limits),
                                        options)


def test_reasoning_parser_of_constrained_requests():
    """A grammar starts at the first token here: a deepseek_r1 server reads a constrained output
    as content (reasoning only inside an explicit <think>), a free one as reasoning until </think>."""
    plan = plan_tools(_request(), ChatOptions(), ServerLimits())
    options = ChatOptions(reasoning_parser="deepseek_r1")
    free = output_parser_factory(plan, options, constrained=False)()
    constrained = output_parser_factory(plan, options, constrained=True)()
    assert isinstance(free.reasoning_parser, DeepSeekR1ReasoningParser)
    assert isinstance(constrained.reasoning_parser, Qwen3ReasoningParser)
    assert free.parse('{"a": 1}').content is None
    assert constrained.parse('{"a": 1}').content == '{"a": 1}'
    assert constrained.parse("<think>hm</think>{}").reasoning_content == "hm"
    assert output_parser_factory(plan, ChatOptions(), constrained=True) is None  # plain content


def test_serve_flags_make_chat_options():
    from pagedjax.server.cli import add_serve_parser, server_options_from_args

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--enable-auto-tool-choice", "--tool-call-parser", "llama3_json",
                              "--reasoning-parser", "deepseek_r1", "--max-tools", "7"])
    options = server_options_from_args(args)
    assert options.chat == ChatOptions(enable_auto_tool_choice=True, tool_call_parser="llama3_json",
                                       reasoning_parser="deepseek_r1")
    assert options.limits.max_tools == 7
    bad = parser.parse_args(["serve", "--enable-auto-tool-choice"])
    with pytest.raises(ValueError, match="tool_call_parser"):
        server_options_from_args(bad)
