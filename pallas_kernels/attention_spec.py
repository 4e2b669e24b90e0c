"""`AttentionSpec`: what one layer's attention computes beyond plain causal softmax.

The spec is static (hashable, part of a compiled step): every model layer hands one to its KV
cache's `attend`, which passes it to the kernels and to the jnp references. Per-head arrays
that vary with the checkpoint (ALiBi slopes, learned sinks) travel beside it as arguments.

Semantics (HF transformers' definitions), for a query at absolute position p and a key at
position j <= p, of query head h:

  logit = (q . k) * sm_scale
  logit = cap * tanh(logit / cap)                       if logit_softcap (Gemma 2)
  logit = logit + alibi_slopes[h] * (j - p)             if use_alibi (BLOOM, MPT, Falcon-RW)
  visible iff j > p - sliding_window                    if sliding_window (the last W
                                                          positions, p itself included)
  softmax over the visible keys, with exp(sinks[h]) added to the denominator if use_sinks
  (GPT-OSS: a learned per-head logit that takes probability mass but has no value).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """One layer's attention variant (static). `AttentionSpec(sm_scale=d ** -0.5)` is plain
    causal attention with the default scale."""

    sm_scale: float  # logits = q . k * sm_scale
    sliding_window: int | None = None  # a query sees the last W positions (itself included); None = all
    logit_softcap: float | None = None  # cap * tanh(logit / cap); None = off
    use_alibi: bool = False  # add alibi_slopes[h] * (key_pos - query_pos) to the logits
    use_sinks: bool = False  # exp(sinks[h]) joins each row's softmax denominator

    def __post_init__(self):
        if not self.sm_scale > 0:
            raise ValueError(f"AttentionSpec.sm_scale must be > 0, got {self.sm_scale!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"AttentionSpec.sliding_window must be None or an int >= 1, got {self.sliding_window!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"AttentionSpec.logit_softcap must be None or > 0, got {self.logit_softcap!r}")

    @property
    def is_plain(self) -> bool:
        """True when only the scale differs from plain causal attention."""
        return self.sliding_window is None and self.logit_softcap is None and not self.use_alibi and not self.use_sinks
