"""`TokenizerInfo`: what the grammar engine needs to know about the model's vocabulary.

Built once per engine from the Hugging Face tokenizer (about 10 ms for a small vocabulary, about
a second for 128k tokens). The model's `vocab_size` (the logits' width) may exceed
`len(tokenizer)`: the padding ids decode to nothing and are never allowed by a grammar.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """The model's vocabulary as the grammar engine (llguidance) sees it.

    vocab_size: width of the logits (and of every bitmask row, in bits). eos_token_ids: the
    tokens that end a sequence; a finished grammar allows only these. ll_tokenizer: the
    `llguidance.LLTokenizer` built from the Hugging Face tokenizer.
    """

    vocab_size: int
    eos_token_ids: tuple[int, ...]
    ll_tokenizer: Any = dataclasses.field(repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"TokenizerInfo.vocab_size must be a positive integer, got {self.vocab_size!r}")
        eos = tuple(self.eos_token_ids)
        if not eos or not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in eos):
            raise ValueError(f"TokenizerInfo.eos_token_ids must be a non-empty list of ids in [0, "
                             f"{self.vocab_size}), got {self.eos_token_ids!r}")
        object.__setattr__(self, "eos_token_ids", eos)

    @property
    def bitmask_width(self) -> int:
        """int32 words per bitmask row: ceil(vocab_size / 32)."""
        return (self.vocab_size + 31) // 32

    @classmethod
    def from_huggingface(cls, tokenizer, *, vocab_size: int | None = None,
                         eos_token_ids: Sequence[int] | int | None = None) -> "TokenizerInfo":
        """From a fast Hugging Face tokenizer.

        vocab_size: the model's logits width (default `len(tokenizer)`); must be at least
        `len(tokenizer)`. eos_token_ids: the model's EOS ids (e.g. all of a Llama-3
        generation config's); default the tokenizer's `eos_token_id`.
        """
        import llguidance.hf
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise ValueError(f"structured outputs need a fast Hugging Face tokenizer, got {type(tokenizer).__name__}")
        num_tokens = len(tokenizer)
        vocab_size = num_tokens if vocab_size is None else vocab_size
        if not isinstance(vocab_size, int) or vocab_size < num_tokens:
            raise ValueError(f"TokenizerInfo.vocab_size must be an integer >= len(tokenizer) = {num_tokens}, "
                             f"got {vocab_size!r}")
        if eos_token_ids is None:
            eos_token_ids = tokenizer.eos_token_id
        if eos_token_ids is None:
            raise ValueError("TokenizerInfo.eos_token_ids: the tokenizer has no eos_token_id; pass eos_token_ids")
        eos = (eos_token_ids,) if isinstance(eos_token_ids, int) else tuple(eos_token_ids)
        for t in eos:  # validated before llguidance sees them (it would panic on a bad id)
            if not isinstance(t, int) or not 0 <= t < vocab_size:
                raise ValueError(f"TokenizerInfo.eos_token_ids must be ids in [0, {vocab_size}), got {eos_token_ids!r}")
        ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(eos))
        return cls(vocab_size=vocab_size, eos_token_ids=eos, ll_tokenizer=ll_tokenizer)
