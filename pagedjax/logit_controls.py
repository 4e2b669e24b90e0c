"""Per-completion constraints on the next token, as one packed bitmask row per step.

A `TokenConstraint` combines what a request asks: a grammar (`structured_outputs`, an
llguidance matcher advanced with every token the completion generates), `allowed_token_ids`
(a fixed row) and `bad_words` (a one-token word is always banned; a longer word's last token
is banned right after its other tokens, vLLM's rule). The runner asks each constrained row for
its bitmask row on the host; the jitted sampler applies the bitmask (one compiled variant,
whatever the grammars). `ConstraintFactory` builds them for an engine: one grammar compiler
(cached per schema) over the tokenizer and the model's vocabulary.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from pagedjax.structured_output import GrammarCompiler, TokenizerInfo, bitmask_width, token_ids_row

logger = logging.getLogger("pagedjax")


class TokenConstraint:
    """The allowed next tokens of one completion (see the module docstring)."""

    def __init__(self, vocab_size: int, matcher=None, allowed_row: np.ndarray | None = None,
                 bad_words: Sequence[tuple[int, ...]] = ()):
        self.vocab_size, self.matcher, self.allowed_row = vocab_size, matcher, allowed_row
        self.bad_words = tuple(bad_words)

    @property
    def needs_host_feedback(self) -> bool:
        """Whether the next row depends on the last token (a grammar, a multi-token bad word)."""
        return self.matcher is not None or any(len(w) > 1 for w in self.bad_words)

    def fill_bitmask(self, bitmask: np.ndarray, row: int, output_tokens: Sequence[int]) -> None:
        """Writes the allowed next tokens into `bitmask[row]` (int32[S, ceil(V/32)], bit set = allowed)."""
        if self.matcher is not None:
            self.matcher.fill_bitmask(bitmask, row)
        else:
            bitmask[row] = -1
        if self.allowed_row is not None:
            bitmask[row] &= self.allowed_row
        for word in self.bad_words:
            prefix = word[:-1]
            if not prefix or (len(output_tokens) >= len(prefix) and tuple(output_tokens[-len(prefix):]) == prefix):
                token = word[-1]
                bitmask[row, token // 32] &= np.int32(~(1 << (token % 32)) if token % 32 != 31 else 0x7FFFFFFF)

    def accept(self, token: int) -> None:
        """Advances the grammar past a generated token."""
        if self.matcher is not None and not self.matcher.accept(token):
            logger.warning("token %d is outside the grammar (it was not masked?)", token)


class ConstraintFactory:
    """Builds `TokenConstraint`s for one engine (tokenizer, vocabulary, EOS ids)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int]):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._eos = [t for t in eos_token_ids if t is not None]
        self._compiler: GrammarCompiler | None = None
        self.compile_seconds = 0.0

    @property
    def compiler(self) -> GrammarCompiler:
        if self._compiler is None:
            if self.tokenizer is None:
                raise ValueError("structured_outputs need a tokenizer; this model has none")
            info = TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                  eos_token_ids=self._eos or None)
            self._compiler = GrammarCompiler(info)
        return self._compiler

    def validate(self, params) -> None:
        """ValueError naming the field for token ids outside the vocabulary; compiles the grammar
        (cached per schema) so a bad one fails at once."""
        vocab = self.vocab_size
        for field in ("logit_bias", "allowed_token_ids"):
            ids = getattr(params, field)
            bad = next((t for t in (ids or ()) if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValueError(f"SamplingParams.{field}: token id {bad} is outside the vocabulary [0, {vocab})")
        if params.bad_words and self.tokenizer is None:
            raise ValueError("SamplingParams.bad_words need a tokenizer; this model has none")
        if params.structured_outputs is not None:
            start = time.perf_counter()
            self.compiler.compile(params.structured_outputs)
            self.compile_seconds += time.perf_counter() - start

    def build(self, params) -> TokenConstraint | None:
        """A fresh constraint for one completion of `params` (None when it asks for none)."""
        if params.structured_outputs is None and params.allowed_token_ids is None and not params.bad_words:
            return None
        matcher = self.compiler.matcher(params.structured_outputs) if params.structured_outputs is not None else None
        allowed = None
        if params.allowed_token_ids is not None:
            allowed = token_ids_row(params.allowed_token_ids, self.vocab_size)
        return TokenConstraint(self.vocab_size, matcher, allowed, self._bad_word_tokens(params.bad_words or ()))

    def _bad_word_tokens(self, words) -> list[tuple[int, ...]]:
        """Each word's token ids, with and without a leading space (as vLLM bans them)."""
        out = []
        for word in words:
            for text in (word, " " + word.lstrip()):
                ids = tuple(self.tokenizer(text, add_special_tokens=False).input_ids)
                if ids and ids not in out:
                    out.append(ids)
        return out

    @property
    def bitmask_width(self) -> int:
        return bitmask_width(self.vocab_size)
