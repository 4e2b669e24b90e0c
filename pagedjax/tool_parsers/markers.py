"""Finding tag markers (`<tool_call>`, `</think>`, ...) in text that arrives in pieces."""

from __future__ import annotations

from typing import Sequence

from pagedjax.tool_parsers.json_stream import JSON_WHITESPACE


def split_at_marker(buffer: str, markers: Sequence[str], final: bool) -> tuple[str, str | None, str]:
    """Splits `buffer` at the earliest of `markers`: (text before, marker, text after).

    Without a marker, returns (safe text, None, held tail): the tail is the longest suffix that
    could begin a marker, kept back until more text decides (nothing is held when `final`).
    """
    best = None
    for marker in markers:
        i = buffer.find(marker)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, marker)
    if best is not None:
        i, marker = best
        return buffer[:i], marker, buffer[i + len(marker):]
    hold = 0 if final else partial_marker_length(buffer, markers)
    return buffer[:len(buffer) - hold], None, buffer[len(buffer) - hold:]


def partial_marker_length(buffer: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `buffer` that is a proper prefix of one of `markers`."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(buffer)), longest, -1):
            if buffer.endswith(marker[:n]):
                longest = n
                break
    return longest


def skip_json_whitespace(text: str, pos: int = 0) -> int:
    """Index of the first character at or after `pos` that is not JSON whitespace."""
    while pos < len(text) and text[pos] in JSON_WHITESPACE:
        pos += 1
    return pos
