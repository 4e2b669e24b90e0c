"""Tool calling and reasoning in chat: which tools a request offers, how its output is read.

vLLM's rules: `tools` without `tool_choice` means "auto"; "auto" needs the server's
`--enable-auto-tool-choice --tool-call-parser NAME` (a 400 otherwise); "required" and a named
function are enforced with a JSON-schema constraint over the tools' parameters and read back
by their schema's parser; "none" offers the tools to the template but reads no calls. With
`parallel_tool_calls: false`, "required" allows one call (`maxItems: 1`) and "auto" keeps the
first. Finish reason "tool_calls" when "auto" or "required" calls end the output ("stop" for a
named function, as OpenAI does). With `--reasoning-parser`, `<think>` sections become
`reasoning_content`.

NOTE: the engine applies a grammar from the first generated token (vLLM starts it after the
reasoning). So for a constrained request the reasoning parser reads reasoning only inside an
explicit `<think>` that the grammar itself produced (qwen3's reading): a deepseek_r1 server's
JSON output is content, not reasoning that never ended.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from pagedjax.reasoning import Qwen3ReasoningParser, get_reasoning_parser
from pagedjax.server.chat_options import ChatOptions
from pagedjax.server.errors import bad_request
from pagedjax.server.protocol import ChatCompletionRequest, DeltaMessage, ResponseFunctionCall, ResponseToolCall
from pagedjax.tool_parsers import (ChatOutputParser, HermesToolParser, ParsedChatOutput, get_tool_parser,
                                   normalize_tool_choice, parser_for_tool_choice, tool_choice_json_schema,
                                   validate_tools)
from pagedjax.tool_parsers import DeltaMessage as ParsedDelta

AUTO_NEEDS_FLAGS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


@dataclasses.dataclass(frozen=True)
class ToolPlan:
    """How one chat request uses tools."""

    tools: tuple[dict[str, Any], ...]  # the validated tools, as the chat template gets them
    choice: str | dict[str, Any]       # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
    schema: dict[str, Any] | None      # the JSON schema enforcing "required" / a named function
    parallel: bool                     # parallel_tool_calls

    @property
    def named(self) -> bool:
        return isinstance(self.choice, dict)

    @property
    def reads_calls(self) -> bool:
        """Whether the output is read for tool calls."""
        return self.choice != "none"


def plan_tools(body: ChatCompletionRequest, options: ChatOptions, limits) -> ToolPlan:
    """Validates `tools`, `tool_choice` and `parallel_tool_calls` (400s naming the field)."""
    raw_tools = [tool.as_dict() for tool in body.tools] if body.tools is not None else None
    if raw_tools is not None and not raw_tools:
        raise bad_request("tools must not be an empty array; give at least one tool or leave the field out",
                          param="tools")
    if raw_tools is not None and len(raw_tools) > limits.max_tools:
        raise bad_request(f"{len(raw_tools)} tools; at most {limits.max_tools} (--max-tools)", param="tools")
    try:
        tools = validate_tools(raw_tools)
    except ValueError as error:
        raise bad_request(str(error), param="tools") from None
    choice_in = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    if choice_in not in (None, "none") and not tools:
        raise bad_request("tool_choice needs tools", param="tool_choice")
    try:
        choice = normalize_tool_choice(choice_in, tools)
    except ValueError as error:
        raise bad_request(str(error), param="tool_choice") from None
    if choice == "auto" and not options.auto_tools:
        raise bad_request(AUTO_NEEDS_FLAGS, param="tool_choice")
    parallel = body.parallel_tool_calls is not False
    try:
        schema = tool_choice_json_schema(tools, choice)
    except ValueError as error:
        raise bad_request(str(error), param="tools") from None
    if schema is not None and choice == "required":
        _close_call_objects(schema)
        if not parallel:
            schema["maxItems"] = 1
    return ToolPlan(tools=tools, choice=choice, schema=schema, parallel=parallel)


def _close_call_objects(schema: dict[str, Any]) -> None:
    """In the "required" schema, each `{"name", "parameters"}` wrapper object allows no other
    keys (the tools' own parameter schemas are left as they are), and is typed as an object in
    its own variant, so that `disable_additional_properties` closes the tools' parameters
    without closing the array items (which have no properties of their own)."""
    items = schema["items"]
    items.pop("type", None)
    for variant in items["anyOf"]:
        variant["type"] = "object"
        variant.setdefault("additionalProperties", False)


def needs_special_tokens(plan: ToolPlan, options: ChatOptions) -> bool:
    """Whether the output must keep special tokens in its text for the auto parser: its markers
    are special tokens (mistral), or are in some checkpoints (`<tool_call>` of Hermes 2 Pro; vLLM's
    hermes parser keeps special tokens too)."""
    if plan.choice != "auto":
        return False
    cls = get_tool_parser(options.tool_call_parser)
    return cls.needs_special_tokens or issubclass(cls, HermesToolParser)


def output_parser_factory(plan: ToolPlan, options: ChatOptions, constrained: bool
                          ) -> Callable[[], ChatOutputParser] | None:
    """Makes one `ChatOutputParser` per generated sequence, or None when the output is plain content."""
    reasoning_cls = get_reasoning_parser(options.reasoning_parser) if options.reasoning_parser else None
    if reasoning_cls is not None and constrained and reasoning_cls.starts_in_reasoning:
        reasoning_cls = Qwen3ReasoningParser  # reasoning only inside an explicit <think> (see the module doc)
    if reasoning_cls is None and not plan.reads_calls:
        return None
    auto = options.tool_call_parser if options.auto_tools else None

    def make() -> ChatOutputParser:
        tool_parser = parser_for_tool_choice(plan.choice, plan.tools, auto) if plan.reads_calls else None
        return ChatOutputParser(reasoning_parser=reasoning_cls() if reasoning_cls else None, tool_parser=tool_parser)

    return make


def finish_reason(plan: ToolPlan, called: bool, reason: str | None) -> str | None:
    """OpenAI's finish reason: "tool_calls" when "auto" / "required" calls ended the output."""
    if called and reason == "stop" and plan.choice in ("auto", "required"):
        return "tool_calls"
    return reason


def response_tool_calls(plan: ToolPlan, parsed: ParsedChatOutput) -> list[ResponseToolCall] | None:
    calls = list(parsed.tool_calls)
    if not plan.parallel:
        calls = calls[:1]
    if not calls:
        return None
    return [ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.function.name,
                                                                    arguments=c.function.arguments))
            for c in calls]


def stream_delta(plan: ToolPlan, parsed: ParsedDelta | None) -> DeltaMessage:
    """A parsed streaming delta as the API's `delta` (tool-call fragments of later calls dropped
    when parallel calls are off)."""
    if parsed is None:
        return DeltaMessage()
    calls = [c.to_openai() for c in parsed.tool_calls if plan.parallel or c.index == 0]
    return DeltaMessage(content=parsed.content or None, reasoning_content=parsed.reasoning_content or None,
                        reasoning=parsed.reasoning_content or None, tool_calls=calls or None)
