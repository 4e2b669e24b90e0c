"""Random walks through a grammar: sample allowed tokens from the bitmask until EOS.

A uniform walk would write strings hundreds of tokens long (almost every token is allowed
inside a JSON string), so the walk leans, more as it goes on, towards tokens that close
something (quotes, brackets) or end the output. Any allowed token may still be drawn.
"""

from __future__ import annotations

import functools

import numpy as np

from pagedjax.structured_output import TokenizerInfo, allocate_bitmask, unpack_bitmask

CLOSING_CHARS = set('"}]')


@functools.lru_cache(maxsize=4)
def closing_tokens(tokenizer, vocab_size: int) -> np.ndarray:
    """bool[V]: tokens whose text is non-empty and made only of closing characters."""
    out = np.zeros(vocab_size, dtype=bool)
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        out[i] = bool(text) and set(text) <= CLOSING_CHARS
    return out


def random_walk(matcher, tokenizer, info: TokenizerInfo, rng: np.random.Generator, *, max_steps: int = 400,
                patience: int = 40) -> tuple[list[int], list[np.ndarray]]:
    """Samples until the matcher accepts EOS; returns the tokens (EOS excluded) and each step's mask row."""
    closing = closing_tokens(tokenizer, info.vocab_size)
    eos = np.zeros(info.vocab_size, dtype=bool)
    eos[list(info.eos_token_ids)] = True
    bitmask = allocate_bitmask(1, info.vocab_size)
    tokens, rows = [], []
    for step in range(max_steps):
        matcher.fill_bitmask(bitmask, 0)
        allowed = unpack_bitmask(bitmask, info.vocab_size)[0]
        rows.append(bitmask[0].copy())
        assert allowed.any(), "a live grammar must allow some token"
        finishing = allowed & (closing | eos)
        pool = finishing if finishing.any() and rng.random() < min(0.9, step / patience) else allowed
        token = int(rng.choice(np.flatnonzero(pool)))
        assert matcher.accept(token), f"an allowed token {token} was refused"
        if matcher.is_terminated():
            return tokens, rows
        tokens.append(token)
    raise AssertionError(f"no EOS after {max_steps} steps: {tokenizer.decode(tokens)!r}")
