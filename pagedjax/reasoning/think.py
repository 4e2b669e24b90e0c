"""Reasoning parsers for `<think>...</think>` models: output -> (reasoning_content, content).

deepseek_r1: the output starts in reasoning (DeepSeek-R1's template opens `<think>` in the
prompt); an opening `<think>` in the output is dropped; reasoning ends at `</think>`; without
it the whole output is reasoning. qwen3: reasoning only inside an explicit `<think>` (the text
around it is content); without `<think>` the whole output is content.

Streaming (`feed`/`finish`) gives the same split as the whole-text `extract_reasoning`. Where
vLLM's two paths disagree (qwen3 with an unclosed `<think>`: reasoning when streamed, content
when whole) this follows the streamed reading for both.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Sequence

from pagedjax.tool_parsers.markers import split_at_marker
from pagedjax.tool_parsers.types import DeltaMessage, merge_deltas


class ThinkReasoningParser(abc.ABC):
    """Base of the think-tag parsers; one object per generated sequence (streaming keeps state).

    tokenizer: optional; when `</think>` is one token of it, `is_reasoning_end(token_ids)`
    tells the engine where constrained decoding (a grammar applied after the reasoning) starts.
    """

    name: ClassVar[str]
    start_tag: ClassVar[str] = "<think>"
    end_tag: ClassVar[str] = "</think>"
    starts_in_reasoning: ClassVar[bool]

    def __init__(self, tokenizer=None):
        self.end_token_id = self._single_token_id(tokenizer, self.end_tag)
        self.start_token_id = self._single_token_id(tokenizer, self.start_tag)
        self._state = "reasoning" if self.starts_in_reasoning else "before"
        self._start_seen = False
        self._pending = ""

    @staticmethod
    def _single_token_id(tokenizer, text: str) -> int | None:
        if tokenizer is None:
            return None
        ids = tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    # -- whole text --------------------------------------------------------------------------
    @abc.abstractmethod
    def extract_reasoning(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a whole output; empty parts are None."""

    # -- streaming -----------------------------------------------------------------------------
    @property
    def reasoning_ended(self) -> bool:
        """Whether the stream so far has left the reasoning section for good."""
        return self._state == "content"

    def is_reasoning_end(self, token_ids: Sequence[int]) -> bool:
        """Token-level check (needs a tokenizer with a single-token end tag): is the reasoning over?"""
        if self.end_token_id is None:
            raise ValueError(f"{self.end_tag!r} is not a single token of this tokenizer (or none was given)")
        for token in reversed(token_ids):
            if token == self.end_token_id:
                return True
            if token == self.start_token_id:
                return False
        return False

    def feed(self, delta_text: str) -> DeltaMessage | None:
        """The delta (reasoning_content and/or content) for the next piece of output text."""
        self._pending += delta_text
        return self._drain(final=False)

    def finish(self) -> DeltaMessage | None:
        """The delta for text held back at the end (a partial tag that never completed)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> DeltaMessage | None:
        out: list[DeltaMessage] = []
        while self._pending:
            if self._state == "content":
                out.append(DeltaMessage(content=self._pending))
                self._pending = ""
                break
            if self._state == "before":
                before, marker, self._pending = split_at_marker(self._pending, [self.start_tag], final)
                out.append(DeltaMessage(content=before))
                next_state = "reasoning"
            else:
                markers = [self.end_tag] if self._start_seen else [self.end_tag, self.start_tag]
                before, marker, self._pending = split_at_marker(self._pending, markers, final)
                out.append(DeltaMessage(reasoning_content=before))
                next_state = "content" if marker == self.end_tag else "reasoning"
            if marker is None:
                break
            if marker == self.start_tag:
                self._start_seen = True
            self._state = next_state
        return merge_deltas(out)


class DeepSeekR1ReasoningParser(ThinkReasoningParser):
    """DeepSeek-R1: reasoning until `</think>` (vLLM's `deepseek_r1`)."""

    name = "deepseek_r1"
    starts_in_reasoning = True

    def extract_reasoning(self, text: str) -> tuple[str | None, str | None]:
        end = text.find(self.end_tag)
        reasoning = text if end < 0 else text[:end]
        reasoning = reasoning.replace(self.start_tag, "", 1)
        content = None if end < 0 else text[end + len(self.end_tag):]
        return reasoning or None, content or None


class Qwen3ReasoningParser(ThinkReasoningParser):
    """Qwen3: reasoning inside `<think>...</think>` (vLLM's `qwen3`)."""

    name = "qwen3"
    starts_in_reasoning = False

    def extract_reasoning(self, text: str) -> tuple[str | None, str | None]:
        start = text.find(self.start_tag)
        if start < 0:
            return None, text or None
        body = start + len(self.start_tag)
        end = text.find(self.end_tag, body)
        if end < 0:
            return text[body:] or None, text[:start] or None
        return text[body:end] or None, (text[:start] + text[end + len(self.end_tag):]) or None
