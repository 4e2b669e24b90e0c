"""The static shapes of compiled steps: a step is padded to a bucket from short fixed lists.

Tokens per step are powers of two from 16 up to (and capped at) `max_num_batched_tokens`,
sequences per step likewise up to `max_num_seqs`, block-table widths likewise (one full
width for the Pallas kernels, which loop only to each sequence's length). The set of
plain-sampling buckets is fixed at start-up (`StepBuckets.all_plain_shapes`, what warm-up
compiles); the rare variants (penalties, min_tokens, logprobs, prompt logprobs, extra
sampler rows of a forking request) get open-ended power-of-two sizes compiled on first use.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pagedjax.config import MAX_LOGPROBS


def pow2_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `largest`, with `largest` itself as the last bucket."""
    out, b = [], smallest
    while b < largest:
        out.append(b)
        b *= 2
    out.append(largest)
    return tuple(out)


def pow2_at_least(n: int, minimum: int) -> int:
    """The smallest power of two >= n and >= minimum (open-ended buckets of rare step variants)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def pick_bucket(buckets: Sequence[int], n: int) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


@dataclasses.dataclass(frozen=True)
class StepShape:
    """The static shape of one compiled step."""

    num_tokens: int  # T: packed tokens
    num_seqs: int  # S: sampler rows (the sequences first, then extra rows of forking requests)
    table_width: int  # W: block-table columns
    decode_only: bool  # one token per sequence: the decode kernel
    penalty_len: int = 0  # P: token-history columns for penalties (0 = no row uses penalties)
    suppress_len: int = 0  # E: suppressed-token columns (min_tokens), 0 = none
    num_logprobs: int = 0  # top logprobs returned per row (0 or MAX_LOGPROBS)
    prompt_logprobs: bool = False  # also logprobs of every packed token's next token
    mask_width: int = 0  # words of the allowed-token bitmask (ceil(V/32)), 0 = no row constrained
    bias_len: int = 0  # B: logit_bias entries per row, 0 = none


@dataclasses.dataclass(frozen=True)
class StepBuckets:
    """The bucket lists of one engine and the choice of a step's shape."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_blocks_per_seq: int
    full_width_tables: bool  # the Pallas kernels: one full-width table costs nothing

    @property
    def token_buckets(self) -> tuple[int, ...]:
        return pow2_buckets(16, max(16, self.max_num_batched_tokens))

    @property
    def seq_buckets(self) -> tuple[int, ...]:
        return pow2_buckets(min(8, self.max_num_seqs), self.max_num_seqs)

    @property
    def width_buckets(self) -> tuple[int, ...]:
        if self.full_width_tables:
            return (self.max_blocks_per_seq,)
        return pow2_buckets(min(4, self.max_blocks_per_seq), self.max_blocks_per_seq)

    def _seq_bucket(self, n: int) -> int:
        # beyond max_num_seqs only when forks add sampler rows: rare, compiled on demand
        return pick_bucket(self.seq_buckets, n) if n <= self.max_num_seqs else pow2_at_least(n, 1)

    def shape(self, num_tokens: int, num_rows: int, max_blocks: int, decode_only: bool, penalty_len: int = 0,
              suppress_len: int = 0, logprobs: bool = False, prompt_logprobs: bool = False, mask_width: int = 0,
              bias_len: int = 0) -> StepShape:
        """The bucket of a step with `num_tokens` tokens and `num_rows` sampler rows."""
        if decode_only:
            seqs = self._seq_bucket(num_rows)
            tokens = seqs
        else:
            # S depends on T alone (S >= num_seqs since every sequence has a token): fewer buckets.
            tokens = pick_bucket(self.token_buckets, num_tokens)
            seqs = self._seq_bucket(max(min(tokens, self.max_num_seqs), num_rows))
        return StepShape(
            num_tokens=tokens, num_seqs=seqs, table_width=pick_bucket(self.width_buckets, max(max_blocks, 1)),
            decode_only=decode_only,
            penalty_len=pow2_at_least(penalty_len, 16) if penalty_len else 0,
            suppress_len=pow2_at_least(suppress_len, 4) if suppress_len else 0,
            num_logprobs=MAX_LOGPROBS if logprobs else 0, prompt_logprobs=prompt_logprobs, mask_width=mask_width,
            bias_len=pow2_at_least(bias_len, 4) if bias_len else 0)

    def all_plain_shapes(self) -> list[StepShape]:
        """Every plain-sampling bucket (no penalties, suppression or logprobs): what warm-up compiles."""
        shapes = []
        for w in self.width_buckets:
            for s in self.seq_buckets:
                shapes.append(self.shape(s, s, w, True))
            for t in self.token_buckets:
                shapes.append(self.shape(t, 1, w, False))
        return list(dict.fromkeys(shapes))
