"""Tool-call parsers (vLLM's `--tool-call-parser NAME`), tool_choice schemas, and streaming deltas.

    parser = get_tool_parser("hermes")()             # one per generated sequence
    parser.extract_tool_calls(text)                  # -> ExtractedToolCalls(tools_called, tool_calls, content)
    parser.feed(delta_text); ...; parser.finish()    # -> DeltaMessage (content / tool_call fragments)
    tool_choice_json_schema(tools, "required")       # -> the JSON schema that enforces the choice
"""

from __future__ import annotations

from pagedjax.tool_parsers.base import ToolParser
from pagedjax.tool_parsers.chat_output import ChatOutputParser, ParsedChatOutput
from pagedjax.tool_parsers.hermes import HermesToolParser, Qwen3ToolParser
from pagedjax.tool_parsers.llama import Llama3JsonToolParser
from pagedjax.tool_parsers.mistral import MistralToolParser
from pagedjax.tool_parsers.tool_choice import (NamedToolCallParser, RequiredToolCallParser, normalize_tool_choice,
                                               tool_choice_json_schema, validate_tools)
from pagedjax.tool_parsers.types import (DeltaFunctionCall, DeltaMessage, DeltaToolCall, ExtractedToolCalls,
                                         FunctionCall, ToolCall, merge_deltas, random_tool_call_id,
                                         tool_calls_from_delta)

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "qwen3": Qwen3ToolParser,
    "llama3_json": Llama3JsonToolParser,
    "llama4_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}


def get_tool_parser(name: str) -> type[ToolParser]:
    """The tool-parser class registered as `name` (ValueError listing the names otherwise)."""
    try:
        return TOOL_PARSERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"tool_call_parser must be one of {sorted(TOOL_PARSERS)}, got {name!r}") from None


def parser_for_tool_choice(tool_choice, tools, auto_parser: str | None, **kwargs) -> ToolParser | None:
    """The parser for a request's output: the schema's parser for "required" / a named function,
    the `auto_parser` format parser for "auto" (None when the server has none), None for "none"."""
    choice = normalize_tool_choice(tool_choice, tools)
    if isinstance(choice, dict):
        return NamedToolCallParser(choice["function"]["name"], **kwargs)
    if choice == "required":
        return RequiredToolCallParser(**kwargs)
    if choice == "auto" and auto_parser is not None:
        return get_tool_parser(auto_parser)(**kwargs)
    return None


__all__ = [
    "TOOL_PARSERS", "get_tool_parser", "parser_for_tool_choice", "ToolParser", "HermesToolParser", "Qwen3ToolParser",
    "Llama3JsonToolParser", "MistralToolParser", "RequiredToolCallParser", "NamedToolCallParser",
    "tool_choice_json_schema", "normalize_tool_choice", "validate_tools", "ChatOutputParser", "ParsedChatOutput",
    "ToolCall", "FunctionCall", "ExtractedToolCalls", "DeltaMessage", "DeltaToolCall", "DeltaFunctionCall",
    "merge_deltas", "tool_calls_from_delta", "random_tool_call_id",
]
