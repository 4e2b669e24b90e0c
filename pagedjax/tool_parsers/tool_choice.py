"""`tools` and `tool_choice` of a chat request: validation, the JSON schema that enforces
`tool_choice="required"` or a named function (as vLLM builds it), and the parsers of the
output that schema produces.

required -> the output is a JSON array of at least one `{"name": <a tool's name>, "parameters":
<that tool's parameters>}`; named -> the output is the named tool's parameters object.
"auto" and "none" need no schema ("auto" leaves detection to a format parser such as hermes).
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence

from pagedjax.tool_parsers.base import ArrayCallStream, ToolParser
from pagedjax.tool_parsers.types import (DeltaFunctionCall, DeltaToolCall, ExtractedToolCalls, FunctionCall, ToolCall,
                                         call_from_object)

_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def validate_tools(tools: Sequence[Mapping[str, Any]] | None) -> tuple[dict[str, Any], ...]:
    """Checks OpenAI `tools` ([{"type": "function", "function": {"name", "description"?, "parameters"?}}])."""
    if tools is None:
        return ()
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ValueError(f"tools must be a list of tool objects, got {type(tools).__name__}")
    names = set()
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise ValueError(f"{where} must be an object")
        if tool.get("type", "function") != "function":
            raise ValueError(f"{where}.type must be 'function', got {tool.get('type')!r}")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise ValueError(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.function.name must be a non-empty string, got {name!r}")
        if name in names:
            raise ValueError(f"{where}.function.name {name!r} is given twice")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ValueError(f"{where}.function.parameters must be a JSON schema object")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{where}.function.description must be a string")
        out.append({"type": "function", "function": dict(function)})
    return tuple(out)


def normalize_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]] | None) -> str | dict:
    """"none" | "auto" | "required", or {"type": "function", "function": {"name": ...}} (checked against tools).

    A missing tool_choice means "auto" with tools and "none" without, as in OpenAI's API.
    """
    tools = validate_tools(tools)
    if tool_choice is None:
        return "auto" if tools else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a named function, got {tool_choice!r}")
        if tool_choice == "required" and not tools:
            raise ValueError("tool_choice 'required' needs tools")
        return tool_choice
    if not isinstance(tool_choice, Mapping) or tool_choice.get("type", "function") != "function" \
            or not isinstance(tool_choice.get("function"), Mapping):
        raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or "
                         f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}'[:300])
    name = tool_choice["function"].get("name")
    if name not in {t["function"]["name"] for t in tools}:
        raise ValueError(f"tool_choice.function.name {name!r} is not one of the request's tools")
    return {"type": "function", "function": {"name": name}}


def _parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(tool["function"].get("parameters") or _EMPTY_PARAMETERS)


def tool_choice_json_schema(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> dict[str, Any] | None:
    """The schema that enforces `tool_choice` (None for "none" and "auto").

    For "required", each tool's `$defs` move to the top level (so `#/$defs/...` references
    still resolve); two tools defining one name differently is a ValueError.
    """
    choice = normalize_tool_choice(tool_choice, tools)
    tools = validate_tools(tools)
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return _parameters(next(t for t in tools if t["function"]["name"] == name))
    if choice != "required":
        return None
    variants, defs = [], {}
    for tool in tools:
        parameters = _parameters(tool)
        for def_name, def_schema in parameters.pop("$defs", {}).items():
            if def_name in defs and defs[def_name] != def_schema:
                raise ValueError(f"tools define $defs {def_name!r} in two different ways")
            defs[def_name] = def_schema
        variants.append({"properties": {"name": {"type": "string", "enum": [tool["function"]["name"]]},
                                        "parameters": parameters},
                         "required": ["name", "parameters"]})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": variants}}
    if defs:
        schema["$defs"] = defs
    return schema


class RequiredToolCallParser(ToolParser):
    """The output of the "required" schema: `[{"name": ..., "parameters": {...}}, ...]` -> tool calls."""

    name = "required"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._stream = ArrayCallStream(0, self.make_id, argument_keys=("parameters",))

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        try:
            array = json.loads(text)
            if not isinstance(array, list) or not array:
                raise ValueError("expected a non-empty JSON array")
            calls = tuple(call_from_object(obj, self.make_id, argument_keys=("parameters",)) for obj in array)
        except ValueError:
            return ExtractedToolCalls.no_calls(text)
        return ExtractedToolCalls(tools_called=True, tool_calls=calls, content=None)

    def _consume(self, final: bool) -> None:
        deltas, rest = self._stream.feed(self._pending)
        self._tool(deltas)
        self._pending = ""
        if rest.strip(" \t\n\r"):
            raise ValueError("text after the tool-call array")


class NamedToolCallParser(ToolParser):
    """The output of a named function's schema: the text is that call's arguments."""

    name = "named"

    def __init__(self, function_name: str, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(function_name, str) or not function_name:
            raise ValueError(f"function_name must be a non-empty string, got {function_name!r}")
        self.function_name = function_name
        self._sent_header = False

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        call = ToolCall(id=self.make_id(), function=FunctionCall(self.function_name, text))
        return ExtractedToolCalls(tools_called=True, tool_calls=(call,), content=None)

    def _consume(self, final: bool) -> None:
        if not self._sent_header and (self._pending or final):
            self._tool([DeltaToolCall(index=0, id=self.make_id(), type="function",
                                      function=DeltaFunctionCall(name=self.function_name, arguments=""))])
            self._sent_header = True
        if self._pending:
            self._tool([DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=self._pending))])
            self._pending = ""
