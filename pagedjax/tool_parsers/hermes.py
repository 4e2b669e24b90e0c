"""Hermes-style tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks.

Used by Hermes 2 Pro / 3, Qwen2.5 and Qwen3 (whose chat templates write tool calls this way;
vLLM serves Qwen3 with `--tool-call-parser hermes`, and `qwen3` is registered here as the
same format). As in vLLM, content is the text before the first block; text between and after
blocks is dropped; a block may be left open at the end of the output.
"""

from __future__ import annotations

import json

from pagedjax.tool_parsers.base import ToolParser
from pagedjax.tool_parsers.markers import skip_json_whitespace, split_at_marker
from pagedjax.tool_parsers.types import ExtractedToolCalls, call_from_object

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    """`<tool_call>` JSON blocks (vLLM's `hermes`)."""

    name = "hermes"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._state = "content"    # content -> open -> call -> close -> between -> open ...

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        start = text.find(START)
        if start < 0:
            return ExtractedToolCalls.no_calls(text)
        decoder = json.JSONDecoder()
        calls, pos = [], start
        try:
            while pos >= 0:
                obj, pos = decoder.raw_decode(text, skip_json_whitespace(text, pos + len(START)))
                calls.append(call_from_object(obj, self.make_id))
                pos = skip_json_whitespace(text, pos)
                if pos == len(text):
                    break
                if not text.startswith(END, pos):
                    raise ValueError(f"text after a tool call's JSON: {text[pos:pos + 20]!r}")
                pos = text.find(START, pos + len(END))
        except ValueError:   # json.JSONDecodeError included: vLLM's fallback, the whole text as content
            return ExtractedToolCalls.no_calls(text)
        return ExtractedToolCalls(tools_called=True, tool_calls=tuple(calls), content=text[:start] or None)

    def _consume(self, final: bool) -> None:
        while self._pending:
            state, buf = self._state, self._pending
            if state in ("content", "between"):
                before, marker, self._pending = split_at_marker(buf, [START], final)
                if state == "content":
                    self._content(before)
                if marker is None:
                    return
                self._state = "open"
            elif state == "open":
                if not self._open_call():
                    return
                self._state = "call"
            elif state == "call":
                if not self._feed_call():
                    return
                self._state = "close"
            else:  # close: whitespace, then the end tag (or the end of the output)
                buf = buf[skip_json_whitespace(buf):]
                self._pending = buf
                if buf.startswith(END):
                    self._pending, self._state = buf[len(END):], "between"
                elif buf and not (END.startswith(buf) and not final):
                    raise ValueError(f"text after a tool call's JSON: {buf[:20]!r}")
                else:
                    return


class Qwen3ToolParser(HermesToolParser):
    """Qwen3's tool calls: the hermes format (`<tool_call>` JSON blocks)."""

    name = "qwen3"
