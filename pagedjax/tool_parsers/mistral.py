"""Mistral tool calls after the `[TOOL_CALLS]` token, in either of Mistral's two layouts.

Before tokenizer v11: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (one JSON array).
From v11: `[TOOL_CALLS]name[ARGS]{...}`, repeated for each call. Content is the text before
the first `[TOOL_CALLS]`. Ids are 9 alphanumerics, as Mistral's templates require.
`[TOOL_CALLS]` is a special token: the engine must not skip special tokens in the text.
"""

from __future__ import annotations

import json
import random
import re
import string

from pagedjax.tool_parsers.base import ArgumentsStream, ArrayCallStream, ToolParser
from pagedjax.tool_parsers.markers import skip_json_whitespace, split_at_marker
from pagedjax.tool_parsers.types import ExtractedToolCalls, FunctionCall, ToolCall, call_from_object

BOT = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_ALPHANUMERIC = string.ascii_letters + string.digits


def mistral_tool_call_id() -> str:
    """A random 9-character alphanumeric id (what Mistral's chat templates accept)."""
    return "".join(random.choices(_ALPHANUMERIC, k=9))


def _function_name(text: str) -> str:
    name = text.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad function name {name!r}")
    return name


class MistralToolParser(ToolParser):
    """`[TOOL_CALLS]` tool calls (vLLM's `mistral`)."""

    name = "mistral"
    needs_special_tokens = True

    def __init__(self, *, make_id=mistral_tool_call_id):
        super().__init__(make_id=make_id)
        self._state = "content"    # content -> after_bot -> (array -> end | name -> args -> after_args -> name ...)
        self._stream: ArrayCallStream | ArgumentsStream | None = None

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        start = text.find(BOT)
        if start < 0:
            return ExtractedToolCalls.no_calls(text)
        try:
            calls = self._whole_calls(text, skip_json_whitespace(text, start + len(BOT)))
        except ValueError:  # as vLLM: the text without the tool-call tokens becomes the content
            return ExtractedToolCalls.no_calls(text.replace(BOT, "").strip())
        return ExtractedToolCalls(tools_called=True, tool_calls=tuple(calls), content=text[:start] or None)

    def _whole_calls(self, text: str, pos: int) -> list[ToolCall]:
        decoder = json.JSONDecoder()
        if text.startswith("[", pos):
            array, pos = decoder.raw_decode(text, pos)
            if not isinstance(array, list) or skip_json_whitespace(text, pos) != len(text):
                raise ValueError("expected one JSON array of tool calls")
            return [call_from_object(obj, self.make_id) for obj in array]
        calls = []
        while True:
            brace, args = text.find("{", pos), text.find(ARGS, pos)
            if brace < 0:
                raise ValueError("tool call without arguments")
            if 0 <= args < brace:
                name, pos = _function_name(text[pos:args]), skip_json_whitespace(text, args + len(ARGS))
            else:
                name, pos = _function_name(text[pos:brace]), brace
            if not text.startswith("{", pos):
                raise ValueError("tool call arguments must be a JSON object")
            arguments, pos = decoder.raw_decode(text, pos)
            calls.append(ToolCall(id=self.make_id(),
                                  function=FunctionCall(name, json.dumps(arguments, ensure_ascii=False))))
            pos = skip_json_whitespace(text, pos)
            if pos == len(text):
                return calls
            if not text.startswith(BOT, pos):
                raise ValueError(f"text after a tool call: {text[pos:pos + 20]!r}")
            pos = skip_json_whitespace(text, pos + len(BOT))

    def _consume(self, final: bool) -> None:
        while self._pending:
            state, buf = self._state, self._pending
            if state == "content":
                before, marker, self._pending = split_at_marker(buf, [BOT], final)
                self._content(before)
                if marker is None:
                    return
                self._state = "after_bot"
            elif state == "after_bot":
                buf = buf[skip_json_whitespace(buf):]
                self._pending = buf
                if not buf:
                    return
                if buf[0] == "[":
                    self._stream, self._state = ArrayCallStream(0, self.make_id), "array"
                else:
                    self._state = "name"
            elif state == "array":
                deltas, self._pending = self._stream.feed(buf)
                self._tool(deltas)
                if not self._stream.done:
                    return
                self._state = "end"
            elif state == "end":
                if buf.strip(" \t\n\r"):
                    raise ValueError(f"text after the tool calls: {buf[:20]!r}")
                self._pending = ""
            elif state == "name":
                name, marker, rest = split_at_marker(buf, [ARGS, "{"], final)
                if marker is None:
                    self._pending = name + rest
                    return
                self._stream = ArgumentsStream(self._num_calls, _function_name(name), self.make_id)
                self._num_calls += 1
                self._pending = rest if marker == ARGS else "{" + rest
                self._state = "args"
            elif state == "args":
                deltas, self._pending = self._stream.feed(buf)
                self._tool(deltas)
                if not self._stream.done:
                    return
                self._state = "after_args"
            else:  # after_args: whitespace, then another [TOOL_CALLS] or the end
                buf = buf[skip_json_whitespace(buf):]
                self._pending = buf
                if buf.startswith(BOT):
                    self._pending, self._state = buf[len(BOT):], "name"   # later calls: name layout only
                elif buf and not (BOT.startswith(buf) and not final):
                    raise ValueError(f"text after a tool call: {buf[:20]!r}")
                else:
                    return
