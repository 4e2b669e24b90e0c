"""Server-sent events and the per-choice cursor that turns cumulative outputs into deltas."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from pagedjax.outputs import CompletionOutput

DONE = "data: [DONE]\n\n"


def sse(payload: str | dict) -> str:
    """One server-sent event carrying a JSON payload."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that could still become a stop string (not streamed yet)."""
    longest = min(max((len(s) for s in stops), default=0) - 1, len(text))
    for k in range(longest, 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


@dataclasses.dataclass
class Delta:
    """What one choice gained since the last chunk."""

    text: str
    token_ids: list[int]
    logprobs: list | None  # engine entries of the new tokens
    finish_reason: str | None
    stop_reason: int | str | None


@dataclasses.dataclass
class StreamCursor:
    """How much of one choice was sent: characters and tokens."""

    num_chars: int = 0
    num_tokens: int = 0
    finished: bool = False

    def advance(self, completion: CompletionOutput, stops: Sequence[str]) -> Delta | None:
        """The delta since the last call, or None when nothing changed. Text that might be the
        start of a stop string is held back until the completion decides (so a client never sees
        part of a stop string that is then cut)."""
        if self.finished:
            return None
        done = completion.finish_reason is not None
        text = completion.text
        visible = len(text) if done or not stops else len(text) - held_back(text, stops)
        new_text = text[self.num_chars:visible] if visible > self.num_chars else ""
        new_ids = list(completion.token_ids[self.num_tokens:])
        if not new_text and not new_ids and not done:
            return None
        entries = None
        if completion.logprobs is not None:
            entries = completion.logprobs[self.num_tokens:self.num_tokens + len(new_ids)]
        self.num_chars = max(self.num_chars, visible)
        self.num_tokens += len(new_ids)
        self.finished = done
        return Delta(new_text, new_ids, entries, completion.finish_reason if done else None,
                     completion.stop_reason if done else None)
