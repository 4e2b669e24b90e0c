"""`SamplingParams` and `BeamSearchParams`: vLLM's names, defaults and meanings.

Both are frozen and validate themselves at construction, raising `ValueError` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pagedjax.config import MAX_LOGPROBS
from pagedjax.structured_output.params import StructuredOutputsParams

_GREEDY_EPS = 1e-5  # vLLM treats temperatures below this as greedy


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample the completion(s) of one prompt (vLLM's `SamplingParams`).

    n: completions to return. best_of: completions to generate, the n with the highest
    cumulative logprob are returned (>= n; default n). temperature: 0 means greedy.
    top_p, top_k (-1 or 0 = off), min_p: nucleus / top-k / min-p filtering.
    presence_penalty, frequency_penalty (OpenAI's, over generated tokens), repetition_penalty
    (HF's/CTRL's, over prompt and generated tokens; 1 = off). seed: per-request seed, giving the
    same tokens whatever else shares the batch. stop: strings that end the completion (cut from
    the text unless include_stop_str_in_output). stop_token_ids: tokens that end it (kept in
    token_ids, not in text). ignore_eos: keep going past EOS. max_tokens / min_tokens: bounds
    on generated tokens (stop tokens and EOS are suppressed before min_tokens). logprobs: number
    of top logprobs to return per generated token (the sampled token's always included);
    prompt_logprobs: likewise per prompt token. skip_special_tokens / detokenize: text options.
    logit_bias: {token id: bias} added to the logits before sampling (OpenAI's, bias in [-100, 100]).
    allowed_token_ids: only these tokens may be sampled. bad_words: words never generated (each
    with and without a leading space; a multi-token word's last token is banned after the others).
    structured_outputs: a grammar the output must follow (`StructuredOutputsParams`, or its dict:
    json schema, regex, choice, grammar or json_object).
    """

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    detokenize: bool = True
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: tuple[int, ...] | None = None
    bad_words: tuple[str, ...] | None = None
    structured_outputs: StructuredOutputsParams | None = None

    MAX_LOGPROBS = MAX_LOGPROBS  # vLLM's default max_logprobs (the engine's max_logprobs may lower it)

    def __post_init__(self):
        # Normalise list inputs (users pass lists, as with vLLM) to hashable tuples.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in (self.stop_token_ids or ())))
        for field in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "min_p"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"SamplingParams.{field} must be a number, got {value!r}")
        for field in ("n", "max_tokens", "min_tokens", "top_k"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SamplingParams.{field} must be an integer, got {value!r}")
        self._normalise_controls()
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        if self.temperature < _GREEDY_EPS and self.temperature != 0.0 and self.temperature >= 0:
            object.__setattr__(self, "temperature", 0.0)
        self._validate()

    def _normalise_controls(self):
        """logit_bias with int keys and float values; tuples for the token and word lists; a dict
        of structured_outputs fields as StructuredOutputsParams."""
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(f"SamplingParams.logit_bias must be a dict of token id -> bias, got "
                                 f"{type(self.logit_bias).__name__}")
            bias = {}
            for key, value in self.logit_bias.items():
                try:
                    token = int(key)
                except (TypeError, ValueError):
                    raise ValueError(f"SamplingParams.logit_bias keys must be token ids, got {key!r}") from None
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
                    raise ValueError(f"SamplingParams.logit_bias[{key!r}] must be a number in [-100, 100], "
                                     f"got {value!r}")
                bias[token] = float(value)
            object.__setattr__(self, "logit_bias", bias or None)
        if self.allowed_token_ids is not None:
            ids = tuple(self.allowed_token_ids)
            if not ids or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
                raise ValueError(f"SamplingParams.allowed_token_ids must be a non-empty list of token ids, got "
                                 f"{self.allowed_token_ids!r}")
            object.__setattr__(self, "allowed_token_ids", ids)
        if self.bad_words is not None:
            words = (self.bad_words,) if isinstance(self.bad_words, str) else tuple(self.bad_words)
            if any(not isinstance(w, str) or not w.strip() for w in words):
                raise ValueError(f"SamplingParams.bad_words must be non-empty strings, got {self.bad_words!r}")
            object.__setattr__(self, "bad_words", words or None)
        if isinstance(self.structured_outputs, dict):
            object.__setattr__(self, "structured_outputs", StructuredOutputsParams.from_dict(self.structured_outputs))
        elif self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"SamplingParams.structured_outputs must be StructuredOutputsParams or a dict, got "
                             f"{type(self.structured_outputs).__name__}")

    @property
    def constrained(self) -> bool:
        """Whether the next token depends on host-side state (a grammar, bad words)."""
        return self.structured_outputs is not None or bool(self.bad_words)

    def _validate(self):
        def bad(field, value, rule):
            raise ValueError(f"SamplingParams.{field} must be {rule}, got {value!r}")

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", self.n, "an integer >= 1")
        if self.best_of is not None and (not isinstance(self.best_of, int) or self.best_of < self.n):
            bad("best_of", self.best_of, f"an integer >= n ({self.n})")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", self.presence_penalty, "in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", self.frequency_penalty, "in [-2, 2]")
        if not 0.0 < self.repetition_penalty < float("inf"):
            bad("repetition_penalty", self.repetition_penalty, "finite and > 0")
        if not 0.0 <= self.temperature < float("inf"):
            bad("temperature", self.temperature, "finite and >= 0")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", self.top_p, "in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", self.top_k, "-1, 0 (off) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", self.min_p, "in [0, 1]")
        if self.seed is not None and not isinstance(self.seed, int):
            bad("seed", self.seed, "an integer or None")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", self.max_tokens, "an integer >= 1")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            bad("min_tokens", self.min_tokens, "an integer >= 0")
        if self.min_tokens > self.max_tokens:
            bad("min_tokens", self.min_tokens, f"<= max_tokens ({self.max_tokens})")
        for field in ("logprobs", "prompt_logprobs"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= self.MAX_LOGPROBS):
                bad(field, value, f"None or an integer in [0, {self.MAX_LOGPROBS}]")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", self.stop, "non-empty strings")
        if any(t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", self.stop_token_ids, "non-negative token ids")
        if self.stop and not self.detokenize:
            bad("stop", self.stop, "empty when detokenize=False (stop strings need text)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def num_samples(self) -> int:
        """Completions generated (best_of, or n)."""
        return self.best_of or self.n


@dataclasses.dataclass(frozen=True)
class BeamSearchParams:
    """Beam search (vLLM's `BeamSearchParams`): keep `beam_width` best sequences by cumulative
    logprob (normalised by `length ** length_penalty` when ranking finished beams)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0

    def __post_init__(self):
        if not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ValueError(f"BeamSearchParams.beam_width must be an integer >= 1, got {self.beam_width!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"BeamSearchParams.max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"BeamSearchParams.temperature must be >= 0, got {self.temperature!r}")


def as_list(params, count: int, default) -> list:
    """One params object per prompt: broadcast a single one, check a list's length."""
    if params is None:
        params = default
    if isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        if len(params) != count:
            raise ValueError(f"got {len(params)} sampling params for {count} prompts")
        return list(params)
    return [params] * count
