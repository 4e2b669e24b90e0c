"""`ToolParser`: whole-text and streaming extraction of tool calls from a model's output.

One parser object per generated sequence (the streaming side keeps state). `feed(delta)`
returns the `DeltaMessage` for each new piece of text and `finish()` flushes what was held
back at the end. For well-formed outputs the merged deltas equal `extract_tool_calls` of the
whole text (content and each call's name and arguments); a malformed call that the whole-text
parse turns back into plain content cannot be retracted once streamed, so streaming then just
stops emitting tool deltas.
"""

from __future__ import annotations

import abc
import json
from typing import Any, ClassVar

from pagedjax.tool_parsers.json_stream import JsonEvent, JsonStreamer, JsonStreamError
from pagedjax.tool_parsers.markers import skip_json_whitespace
from pagedjax.tool_parsers.types import (DeltaFunctionCall, DeltaMessage, DeltaToolCall, ExtractedToolCalls,
                                         ToolCallIdFactory, merge_deltas, random_tool_call_id)

ARGUMENT_KEYS = ("arguments", "parameters")


class ToolParser(abc.ABC):
    """Base of the tool-call parsers (vLLM's `ToolParser`, driven by text alone).

    make_id: makes the id of each new call (default: vLLM's `chatcmpl-tool-<hex>`).
    needs_special_tokens: the parser's markers are special tokens, so the engine must keep
    them in the detokenized text (`skip_special_tokens=False`) for requests with tools.
    """

    name: ClassVar[str]
    needs_special_tokens: ClassVar[bool] = False

    def __init__(self, *, make_id: ToolCallIdFactory = random_tool_call_id):
        self.make_id = make_id
        self._pending = ""
        self._out: list[DeltaMessage] = []
        self._failed = False
        self._call: SingleCallStream | None = None  # the call being streamed (JSON-object formats)
        self._num_calls = 0

    @abc.abstractmethod
    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        """The tool calls and content of a whole output."""

    @abc.abstractmethod
    def _consume(self, final: bool) -> None:
        """Advances over `self._pending` (emitting through `_content`/`_tool`); `final` at end of stream."""

    def feed(self, delta_text: str) -> DeltaMessage | None:
        """The delta for the next piece of output text (None when nothing is ready to send)."""
        self._pending += delta_text
        return self._drain(final=False)

    def finish(self) -> DeltaMessage | None:
        """The delta for text held back until the end (a partial marker that never completed)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> DeltaMessage | None:
        if not self._failed:
            try:
                self._consume(final)
            except (JsonStreamError, ValueError):
                self._failed = True   # malformed call: stop streaming tool deltas (see module doc)
        if self._failed:
            self._pending = ""
        out, self._out = self._out, []
        return merge_deltas(out)

    def _content(self, text: str) -> None:
        if text:
            self._out.append(DeltaMessage(content=text))

    def _tool(self, calls: list[DeltaToolCall]) -> None:
        if calls:
            self._out.append(DeltaMessage(tool_calls=tuple(calls)))

    def _open_call(self) -> bool:
        """Skips JSON whitespace of the pending text; with text left, opens the next call's
        `SingleCallStream` (True). False: wait for more text."""
        self._pending = self._pending[skip_json_whitespace(self._pending):]
        if not self._pending:
            return False
        self._call = SingleCallStream(self._num_calls, self.make_id)
        self._num_calls += 1
        return True

    def _feed_call(self) -> bool:
        """Feeds the pending text to the open call, emitting its deltas; True once its JSON is complete."""
        deltas, self._pending = self._call.feed(self._pending)
        self._tool(deltas)
        return self._call.done


class ObjectCallStream:
    """One streamed `{"name": ..., "arguments": {...}}` object at `base` (a path) of a JSON stream.

    `on_events` turns the stream's events into tool-call deltas: the header (id, type, name)
    once the name is known, then argument pieces; arguments read before the name wait for it.
    Raises ValueError when the object ends without a string name, or gives two argument keys.
    """

    def __init__(self, index: int, base: tuple, make_id: ToolCallIdFactory, argument_keys=ARGUMENT_KEYS):
        self.index = index
        self.base = base
        self.make_id = make_id
        self.argument_keys = argument_keys
        self.done = False
        self._name_text = ""
        self._name: str | None = None
        self._args_key: Any = None
        self._held_args: list[str] = []

    def on_events(self, events: list[JsonEvent]) -> list[DeltaToolCall]:
        out: list[DeltaToolCall] = []
        depth = len(self.base)
        for event in events:
            if event.path[:depth] != self.base or self.done:
                continue
            if len(event.path) == depth:
                if event.end:
                    self._end(out)
                continue
            key = event.path[depth]
            if key == "name" and len(event.path) == depth + 1:
                self._on_name(event, out)
            elif key in self.argument_keys:
                if self._args_key is None:
                    self._args_key = key
                elif key != self._args_key:
                    raise ValueError(f"tool call gives both {self._args_key!r} and {key!r}")
                if event.text:
                    self._on_args(event.text, out)
        return out

    def _on_name(self, event: JsonEvent, out: list[DeltaToolCall]) -> None:
        self._name_text += event.text
        if not event.end:
            return
        name = json.loads(self._name_text)
        if not isinstance(name, str) or self._name is not None:
            raise ValueError("tool call name must be one string")
        self._name = name
        out.append(DeltaToolCall(index=self.index, id=self.make_id(), type="function",
                                 function=DeltaFunctionCall(name=name, arguments="")))
        for piece in self._held_args:
            self._on_args(piece, out)
        self._held_args = []

    def _on_args(self, text: str, out: list[DeltaToolCall]) -> None:
        if self._name is None:
            self._held_args.append(text)
        else:
            out.append(DeltaToolCall(index=self.index, function=DeltaFunctionCall(arguments=text)))

    def _end(self, out: list[DeltaToolCall]) -> None:
        if self._name is None:
            raise ValueError("tool call object without a name")
        if self._args_key is None:
            self._on_args("{}", out)
        self.done = True


class ArrayCallStream:
    """A streamed JSON array of call objects (`[{"name": ..., "arguments": ...}, ...]`)."""

    def __init__(self, first_index: int, make_id: ToolCallIdFactory, argument_keys=ARGUMENT_KEYS):
        self.streamer = JsonStreamer(roots="[")
        self.make_id = make_id
        self.argument_keys = argument_keys
        self.first_index = first_index
        self.calls: list[ObjectCallStream] = []

    @property
    def done(self) -> bool:
        return self.streamer.done

    def feed(self, text: str) -> tuple[list[DeltaToolCall], str]:
        """Tool-call deltas from `text`, and the text after the array's end."""
        events, rest = self.streamer.feed(text)
        out: list[DeltaToolCall] = []
        for event in events:
            if len(event.path) >= 1 and event.path[0] == len(self.calls):
                if not event.text.startswith("{"):
                    raise ValueError("each tool call must be a JSON object")
                self.calls.append(ObjectCallStream(self.first_index + len(self.calls), (event.path[0],),
                                                   self.make_id, self.argument_keys))
            if len(event.path) >= 1:
                out += self.calls[event.path[0]].on_events([event])
        return out, rest


class SingleCallStream:
    """One streamed call object at the root of its own JSON text (`{"name": ..., ...}`)."""

    def __init__(self, index: int, make_id: ToolCallIdFactory, argument_keys=ARGUMENT_KEYS):
        self.streamer = JsonStreamer(roots="{")
        self.call = ObjectCallStream(index, (), make_id, argument_keys)

    @property
    def done(self) -> bool:
        return self.streamer.done

    def feed(self, text: str) -> tuple[list[DeltaToolCall], str]:
        events, rest = self.streamer.feed(text)
        return self.call.on_events(events), rest


class ArgumentsStream:
    """A call whose name came first in plain text and whose arguments are the JSON text that follows."""

    def __init__(self, index: int, name: str, make_id: ToolCallIdFactory):
        self.streamer = JsonStreamer(roots="{")
        self.index = index
        self._header = DeltaToolCall(index=index, id=make_id(), type="function",
                                     function=DeltaFunctionCall(name=name, arguments=""))

    @property
    def done(self) -> bool:
        return self.streamer.done

    def feed(self, text: str) -> tuple[list[DeltaToolCall], str]:
        events, rest = self.streamer.feed(text)
        out = [self._header] if self._header is not None else []
        self._header = None
        out += [DeltaToolCall(index=self.index, function=DeltaFunctionCall(arguments=e.text))
                for e in events if e.text]
        return out, rest
