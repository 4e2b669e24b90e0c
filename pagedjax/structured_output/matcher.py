"""`GrammarMatcher`: one request's position in its grammar, and the host-side bitmask fill.

The engine keeps one matcher per constrained sequence. Each step, for the scheduled rows, it
fills the next-token bitmask on the host (`fill_bitmask_rows`, while the device runs the
forward pass), applies it inside the jitted sampler (`apply_token_bitmask`), then feeds each
sampled token back with `accept`. Once the grammar is complete only EOS is allowed; after EOS
is accepted the matcher `is_terminated()`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pagedjax.structured_output.bitmask import check_bitmask, eos_only_row
from pagedjax.structured_output.tokenizer_info import TokenizerInfo


class GrammarMatcher:
    """Matches one sequence's tokens against a compiled grammar (a thin llguidance wrapper).

    Not thread-safe: one owner (the engine step) calls it. Build it with
    `GrammarCompiler.matcher(params)` or `CompiledGrammar.new_matcher()`.
    """

    def __init__(self, ll_matcher, tokenizer_info: TokenizerInfo):
        self._ll = ll_matcher
        self._info = tokenizer_info
        self._eos = frozenset(tokenizer_info.eos_token_ids)
        self._num_accepted = 0
        self._terminated = False
        self._eos_recorded = False  # llguidance records an EOS only when its grammar was not yet stopped

    @property
    def num_accepted_tokens(self) -> int:
        """Tokens accepted so far (the final EOS included), i.e. how far `rollback` can go."""
        return self._num_accepted

    @property
    def error(self) -> str | None:
        """The grammar engine's error message, if it failed (e.g. a parser resource limit)."""
        return self._ll.get_error() if self._ll.is_error() else None

    def is_terminated(self) -> bool:
        """Whether EOS has been accepted: the constrained output is complete."""
        return self._terminated

    def is_complete(self) -> bool:
        """Whether the grammar is satisfied now (EOS would be accepted)."""
        return self._terminated or self._ll.is_accepting() or self._ll.is_stopped()

    def is_allowed(self, token_id: int) -> bool:
        """Whether `token_id` may come next (nothing changes)."""
        if self._terminated or self._ll.is_error():
            return token_id in self._eos
        if token_id in self._eos:
            return self._ll.is_accepting() or self._ll.is_stopped()
        return 0 <= token_id < self._info.vocab_size and self._ll.validate_tokens([token_id]) == 1

    def accept(self, token_id: int) -> bool:
        """Advances past `token_id`; returns False (and changes nothing) if the grammar forbids it."""
        token_id = int(token_id)
        if not self.is_allowed(token_id):
            return False
        if self._terminated:
            return True  # a further EOS after the end changes nothing
        if token_id in self._eos:
            self._eos_recorded = not self._ll.is_stopped()
            if self._eos_recorded and not self._ll.consume_token(token_id):
                raise RuntimeError(f"grammar matcher rejected an allowed EOS: {self._ll.get_error()}")
            self._terminated = True
        elif not self._ll.consume_token(token_id):
            raise RuntimeError(f"grammar matcher rejected an allowed token {token_id}: {self._ll.get_error()}")
        self._num_accepted += 1
        return True

    def accept_tokens(self, token_ids: Sequence[int]) -> int:
        """Accepts tokens in order until one is forbidden; returns how many were accepted."""
        for i, token_id in enumerate(token_ids):
            if not self.accept(token_id):
                return i
        return len(token_ids)

    def rollback(self, num_tokens: int) -> None:
        """Forgets the last `num_tokens` accepted tokens (speculative decoding, stop strings)."""
        if not isinstance(num_tokens, int) or not 0 <= num_tokens <= self._num_accepted:
            raise ValueError(f"rollback num_tokens must be in [0, {self._num_accepted}], got {num_tokens!r}")
        if num_tokens == 0:
            return
        grammar_tokens = num_tokens
        if self._terminated:
            self._terminated = False
            if not self._eos_recorded:
                grammar_tokens -= 1
        if grammar_tokens and not self._ll.rollback(grammar_tokens):
            raise RuntimeError(f"grammar matcher could not roll back {grammar_tokens} tokens: {self._ll.get_error()}")
        self._num_accepted -= num_tokens

    def reset(self) -> None:
        """Back to the start of the grammar (e.g. a preempted request recomputed from scratch)."""
        self._ll.reset()
        self._num_accepted = 0
        self._terminated = False

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Writes the allowed next tokens into `bitmask[row]` (int32[S, ceil(V/32)], bit set = allowed)."""
        import llguidance.numpy

        check_bitmask(bitmask, self._info.vocab_size)
        if not 0 <= row < bitmask.shape[0]:
            raise ValueError(f"bitmask row {row} out of range [0, {bitmask.shape[0]})")
        if self._terminated:
            bitmask[row] = eos_only_row(self._info)
            return
        llguidance.numpy.fill_next_token_bitmask(self._ll, bitmask, row)
        self._finish_row(bitmask, row)

    def _finish_row(self, bitmask: np.ndarray, row: int) -> None:
        # NOTE: a matcher in an error state (a resource limit, a bug) would leave an all-zero row,
        # i.e. all logits -inf; allow EOS instead so the sequence ends, and `error` tells why.
        if self._ll.is_error() or not bitmask[row].any():
            bitmask[row] = eos_only_row(self._info)


def fill_bitmask_rows(bitmask: np.ndarray, matchers: Sequence[GrammarMatcher | None], *, executor=None) -> None:
    """Fills one bitmask row per entry of `matchers`; rows of None (and rows past the end) allow every token.

    bitmask: int32[S, ceil(V/32)] with S >= len(matchers) (a padded batch), written in place.
    executor: an `llguidance.LLExecutor` to compute the constrained rows on several threads
    (the GIL is released); None computes them one after another.
    """
    import llguidance.numpy

    if len(matchers) > bitmask.shape[0]:
        raise ValueError(f"{len(matchers)} matchers for a bitmask of {bitmask.shape[0]} rows")
    constrained = [(row, m) for row, m in enumerate(matchers) if m is not None]
    info = constrained[0][1]._info if constrained else None
    if info is not None:
        check_bitmask(bitmask, info.vocab_size)
    bitmask.fill(-1)
    live = [(row, m) for row, m in constrained if not m._terminated]
    if executor is not None and len(live) > 1:
        llguidance.numpy.fill_next_token_bitmask_par(executor, [(m._ll, row) for row, m in live], bitmask)
        for row, m in live:
            m._finish_row(bitmask, row)
    else:
        for row, m in live:
            m.fill_bitmask(bitmask, row)
    for row, m in constrained:
        if m._terminated:
            bitmask[row] = eos_only_row(m._info)
