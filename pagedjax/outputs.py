"""Request outputs, as vLLM returns them."""

from __future__ import annotations

import dataclasses
from typing import Optional

# One generated position's logprobs: token id -> Logprob (the sampled token always included).
SampleLogprobs = list[dict[int, "Logprob"]]
PromptLogprobs = list[Optional[dict[int, "Logprob"]]]


@dataclasses.dataclass
class Logprob:
    """A token's log-probability under the model's raw distribution, its rank and text."""

    logprob: float
    rank: int | None = None  # 1 = most likely
    decoded_token: str | None = None


@dataclasses.dataclass
class CompletionOutput:
    """One completion of a request."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class RequestOutput:
    """All completions of one prompt (`finished` once every completion has ended)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclasses.dataclass
class BeamSequence:
    """One beam of a beam search: generated tokens, text and cumulative logprob."""

    token_ids: list[int]
    text: str
    cumulative_logprob: float
    finish_reason: str | None = None


@dataclasses.dataclass
class BeamSearchOutput:
    """The beams of one prompt, best first."""

    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[BeamSequence]
