"""Llama 3.x / 4 JSON tool calls: the output is `{"name": ..., "parameters": {...}}` objects.

Optionally after `<|python_tag|>`, several separated by `;`. As vLLM's streaming parser does,
an output is a tool call only when it starts (after whitespace) with `{` or the tag; anything
else is plain content. Calls leave no content; a malformed call makes the whole text content.
"""

from __future__ import annotations

import json

from pagedjax.tool_parsers.base import ToolParser
from pagedjax.tool_parsers.markers import skip_json_whitespace
from pagedjax.tool_parsers.types import ExtractedToolCalls, call_from_object

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    """JSON tool calls of Llama 3.1+ (vLLM's `llama3_json`, also registered as `llama4_json`)."""

    name = "llama3_json"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._state = "lead"       # lead -> (content | call -> separator -> next -> call ...)

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        pos = skip_json_whitespace(text)
        if text.startswith(PYTHON_TAG, pos):
            pos = skip_json_whitespace(text, pos + len(PYTHON_TAG))
        elif not text.startswith("{", pos):
            return ExtractedToolCalls.no_calls(text)
        decoder = json.JSONDecoder()
        calls = []
        try:
            while True:
                if not text.startswith("{", pos):
                    raise ValueError("a tool call must be a JSON object")
                obj, pos = decoder.raw_decode(text, pos)
                calls.append(call_from_object(obj, self.make_id))
                pos = skip_json_whitespace(text, pos)
                if pos < len(text) and text[pos] == ";":
                    pos = skip_json_whitespace(text, pos + 1)
                elif pos < len(text):
                    raise ValueError(f"text after a tool call: {text[pos:pos + 20]!r}")
                if pos == len(text):
                    break
        except ValueError:
            return ExtractedToolCalls.no_calls(text)
        return ExtractedToolCalls(tools_called=True, tool_calls=tuple(calls), content=None)

    def _consume(self, final: bool) -> None:
        while self._pending:
            state, buf = self._state, self._pending
            if state == "lead":
                start = skip_json_whitespace(buf)
                rest = buf[start:]
                if not rest:
                    if final:
                        self._state = "content"   # whitespace only: it is content
                        continue
                    return
                if rest.startswith(PYTHON_TAG):
                    self._pending, self._state = rest[len(PYTHON_TAG):], "next"
                elif rest.startswith("{"):
                    self._pending, self._state = rest, "next"
                elif PYTHON_TAG.startswith(rest) and not final:
                    return
                else:
                    self._state = "content"
            elif state == "content":
                self._content(buf)
                self._pending = ""
            elif state == "next":
                if not self._open_call():
                    return
                self._state = "call"
            elif state == "call":
                if not self._feed_call():
                    return
                self._state = "separator"
            else:  # separator
                buf = buf[skip_json_whitespace(buf):]
                if not buf:
                    self._pending = ""
                    return
                if buf[0] != ";":
                    raise ValueError(f"text after a tool call: {buf[:20]!r}")
                self._pending, self._state = buf[1:], "next"
