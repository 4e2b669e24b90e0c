"""Incremental detokenization with stop strings.

`IncrementalDetokenizer.push(token_ids)` returns the newly readable text. It never emits half
of a multi-byte character: a fast (Rust) tokenizer streams through `tokenizers.DecodeStream`,
which holds tokens back until they decode to complete UTF-8; a slow tokenizer falls back to
decoding the whole output and emitting the stable suffix (nothing ending in U+FFFD).

Stop strings may span tokens: the detokenizer keeps the text and searches only the region
the new text could have completed. When one matches, the text is cut before it (or after it,
with `include_stop_str_in_output`), and `stop_string` says which one. Text that might still
become the start of a stop string is held back from `emitted` (the streamed text) until it is
decided, so a streaming client never sees part of a stop string.
"""

from __future__ import annotations

from typing import Sequence


class IncrementalDetokenizer:
    """Decodes one completion's tokens as they arrive."""

    def __init__(self, tokenizer, prompt_token_ids: Sequence[int], *, skip_special_tokens: bool = True,
                 stop: Sequence[str] = (), include_stop_str_in_output: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._stop = tuple(stop)
        self._include_stop = include_stop_str_in_output
        self._max_stop_len = max((len(s) for s in self._stop), default=0)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._token_ids: list[int] = []
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            # Prime with the prompt's tail so the first tokens decode with their context (spaces).
            tail = list(prompt_token_ids[-6:])
            self._stream = DecodeStream(ids=tail, skip_special_tokens=skip_special_tokens)
        self.text = ""  # all decoded text so far (cut at a stop string once found)
        self.emitted = 0  # characters of `text` safe to stream (no possible stop-string prefix)
        self.stop_string: str | None = None

    def push(self, token_ids: Sequence[int]) -> str:
        """Appends tokens; returns the new text that became safe to stream."""
        if self.stop_string is not None:
            return ""
        before = len(self.text)
        for tid in token_ids:
            self._token_ids.append(int(tid))
            if self._backend is not None:
                piece = self._stream.step(self._backend, int(tid))
                if piece:
                    self.text += piece
        if self._backend is None:
            full = self._tokenizer.decode(self._token_ids, skip_special_tokens=self._skip_special)
            if not full.endswith("\ufffd"):
                self.text = full
        if self._stop and len(self.text) > before:
            self._check_stop(before)
        return self._advance()

    def _check_stop(self, new_from: int) -> None:
        search_from = max(0, new_from - self._max_stop_len + 1)
        best = None
        for s in self._stop:
            idx = self.text.find(s, search_from)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is not None:
            idx, s = best
            self.stop_string = s
            self.text = self.text[: idx + len(s)] if self._include_stop else self.text[:idx]

    def _advance(self) -> str:
        safe = len(self.text)
        if self._stop and self.stop_string is None:
            # hold back a suffix that is a prefix of some stop string
            for k in range(min(self._max_stop_len - 1, len(self.text)), 0, -1):
                tail = self.text[-k:]
                if any(s.startswith(tail) for s in self._stop):
                    safe = len(self.text) - k
                    break
        new = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return new

    def flush(self) -> str:
        """At the end of the completion: releases any held-back text."""
        new = self.text[self.emitted:]
        self.emitted = len(self.text)
        return new
