"""Tool-call results, whole and streamed, in the OpenAI chat-completions shapes.

`ExtractedToolCalls` is what a parser finds in a whole output; `DeltaMessage` is one
streamed chunk's worth (content, reasoning_content, tool-call fragments). `to_openai()`
gives the JSON objects of the API, with absent fields left out.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any, Callable, Iterable

ToolCallIdFactory = Callable[[], str]


def random_tool_call_id() -> str:
    """A fresh tool-call id in vLLM's form (`chatcmpl-tool-` and 32 hex digits)."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclasses.dataclass(frozen=True)
class FunctionCall:
    """A function call: its name and its arguments as JSON text."""

    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One tool call of an assistant message."""

    id: str
    function: FunctionCall
    type: str = "function"

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": self.function.to_openai()}


@dataclasses.dataclass(frozen=True)
class ExtractedToolCalls:
    """What a parser found in a whole output: the calls and the remaining content (None if empty)."""

    tools_called: bool
    tool_calls: tuple[ToolCall, ...]
    content: str | None

    @classmethod
    def no_calls(cls, text: str) -> "ExtractedToolCalls":
        return cls(tools_called=False, tool_calls=(), content=text)


@dataclasses.dataclass(frozen=True)
class DeltaFunctionCall:
    """A fragment of a streamed function call: the name arrives once, arguments in pieces."""

    name: str | None = None
    arguments: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return {k: v for k, v in (("name", self.name), ("arguments", self.arguments)) if v is not None}


@dataclasses.dataclass(frozen=True)
class DeltaToolCall:
    """A fragment of tool call number `index`; its first fragment carries id, type and name."""

    index: int
    function: DeltaFunctionCall
    id: str | None = None
    type: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
        if self.type is not None:
            out["type"] = self.type
        out["function"] = self.function.to_openai()
        return out


@dataclasses.dataclass(frozen=True)
class DeltaMessage:
    """One streamed chunk's `delta`: new content, reasoning and tool-call fragments."""

    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: tuple[DeltaToolCall, ...] = ()

    def is_empty(self) -> bool:
        return not self.content and not self.reasoning_content and not self.tool_calls

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.content:
            out["content"] = self.content
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            out["tool_calls"] = [t.to_openai() for t in self.tool_calls]
        return out


def merge_deltas(deltas: Iterable[DeltaMessage | None]) -> DeltaMessage | None:
    """One delta equivalent to `deltas` in order (fragments of one call joined); None if all empty."""
    content, reasoning = [], []
    calls: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for delta in deltas:
        if delta is None:
            continue
        content.append(delta.content or "")
        reasoning.append(delta.reasoning_content or "")
        for call in delta.tool_calls:
            if call.index not in calls:
                calls[call.index] = {"id": None, "type": None, "name": None, "arguments": None}
                order.append(call.index)
            entry = calls[call.index]
            entry["id"] = entry["id"] or call.id
            entry["type"] = entry["type"] or call.type
            entry["name"] = entry["name"] or call.function.name
            if call.function.arguments is not None:
                entry["arguments"] = (entry["arguments"] or "") + call.function.arguments
    merged = DeltaMessage(
        content="".join(content) or None, reasoning_content="".join(reasoning) or None,
        tool_calls=tuple(DeltaToolCall(index=i, id=calls[i]["id"], type=calls[i]["type"],
                                       function=DeltaFunctionCall(calls[i]["name"], calls[i]["arguments"]))
                         for i in order))
    return None if merged.is_empty() else merged


def tool_calls_from_delta(delta: DeltaMessage | None) -> tuple[ToolCall, ...]:
    """The complete calls of a merged stream (for the final message or `finish_reason`)."""
    if delta is None:
        return ()
    return tuple(ToolCall(id=c.id or random_tool_call_id(),
                          function=FunctionCall(c.function.name or "", c.function.arguments or ""))
                 for c in delta.tool_calls)


def call_from_object(obj: Any, make_id: ToolCallIdFactory, argument_keys=("arguments", "parameters")) -> ToolCall:
    """A ToolCall from a parsed {"name": ..., "arguments": {...}} object (ValueError if it is not one).

    Arguments are re-serialised as vLLM does (`json.dumps(..., ensure_ascii=False)`); a call
    without arguments gets "{}"; one giving two of `argument_keys` is refused (ValueError).
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError(f"not a tool call object: {obj!r}"[:200])
    given = [k for k in argument_keys if k in obj]
    if len(given) > 1:
        raise ValueError(f"tool call gives both {given[0]!r} and {given[1]!r}")
    arguments = obj[given[0]] if given else {}
    return ToolCall(id=make_id(), function=FunctionCall(obj["name"], json.dumps(arguments, ensure_ascii=False)))
