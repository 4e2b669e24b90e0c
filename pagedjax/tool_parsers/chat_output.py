"""`ChatOutputParser`: an assistant output -> reasoning, content and tool calls, whole or streamed.

The reasoning parser (if any) runs first; the content it leaves goes through the tool parser
(if any), as vLLM's chat serving chains `--reasoning-parser` and `--tool-call-parser`.
"""

from __future__ import annotations

import dataclasses

from pagedjax.tool_parsers.base import ToolParser
from pagedjax.tool_parsers.types import DeltaMessage, ToolCall, merge_deltas


@dataclasses.dataclass(frozen=True)
class ParsedChatOutput:
    """The parts of one whole assistant output (empty parts are None / ())."""

    reasoning_content: str | None
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()


class ChatOutputParser:
    """Chains a reasoning parser and a tool parser; one object per generated sequence.

    reasoning_parser: a `ThinkReasoningParser` instance or None. tool_parser: a `ToolParser`
    instance or None (tool_choice "none", or a request without tools).
    """

    def __init__(self, *, reasoning_parser=None, tool_parser: ToolParser | None = None):
        self.reasoning_parser = reasoning_parser
        self.tool_parser = tool_parser

    def parse(self, text: str) -> ParsedChatOutput:
        """Reasoning, content and tool calls of a whole output."""
        reasoning, content = (None, text or None)
        if self.reasoning_parser is not None:
            reasoning, content = self.reasoning_parser.extract_reasoning(text)
        if self.tool_parser is None or content is None:
            return ParsedChatOutput(reasoning, content)
        extracted = self.tool_parser.extract_tool_calls(content)
        return ParsedChatOutput(reasoning, extracted.content or None, extracted.tool_calls)

    def feed(self, delta_text: str) -> DeltaMessage | None:
        """The delta for the next piece of output text."""
        if self.reasoning_parser is None:
            return self._tools(DeltaMessage(content=delta_text), final=False)
        return self._tools(self.reasoning_parser.feed(delta_text), final=False)

    def finish(self) -> DeltaMessage | None:
        """The delta for what was held back, at the end of the output."""
        held = self.reasoning_parser.finish() if self.reasoning_parser is not None else None
        return self._tools(held, final=True)

    def _tools(self, delta: DeltaMessage | None, final: bool) -> DeltaMessage | None:
        if self.tool_parser is None:
            return delta if delta is not None and not delta.is_empty() else None
        reasoning = DeltaMessage(reasoning_content=delta.reasoning_content) if delta is not None else None
        parts = [reasoning, self.tool_parser.feed(delta.content or "") if delta is not None else None]
        if final:
            parts.append(self.tool_parser.finish())
        return merge_deltas(parts)
