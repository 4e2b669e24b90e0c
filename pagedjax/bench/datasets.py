"""Benchmark workloads: lists of (prompt token ids, output length), reproducible from a seed.

Three sources, all filtered as vLLM's throughput benchmark filters ShareGPT (a request is
dropped when its prompt or output has fewer than 4 tokens, its prompt more than 1024, or prompt +
output more than 2048), and additionally when prompt + output exceeds the engine's
`max_model_len`:

* `synthetic_sharegpt`: log-normal prompt and output lengths shaped like ShareGPT's
  (`SYNTHETIC_SHAREGPT`: before filtering, prompt ~ LogNormal(mu=5.05, sigma=1.1) and output ~
  LogNormal(mu=4.8, sigma=1.0), rounded; after the filters the means are about 218 and 191 tokens
  and the medians about 146 and 120 — vLLM's filtered ShareGPT has means of roughly 220 / 190),
  rejected and redrawn until `num_prompts` pass. Prompts are uniform random token ids.
* `fixed_lengths`: every prompt `input_len` random ids, every output `output_len` tokens.
* `load_sharegpt`: a ShareGPT-format JSON (a list of `{"conversations": [{"from", "value"}, ...]}`):
  the first turn is the prompt, the second the reference completion whose token count is the
  output length; conversations are shuffled with the seed, then the first `num_prompts` that
  pass the filters are kept (needs the model's tokenizer).

Requests run with `ignore_eos=True` and `max_tokens` = the output length, so every system
produces exactly the same number of tokens per request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import numpy as np

from pagedjax.bench.common import summary

MIN_LEN = 4  # shortest prompt / output kept
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048
SYNTHETIC_SHAREGPT = dict(prompt_mu=5.05, prompt_sigma=1.1, output_mu=4.8, output_sigma=1.0)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A benchmark's requests: prompt token ids and exact output lengths, in submission order."""

    prompts: tuple[tuple[int, ...], ...]
    output_lens: tuple[int, ...]
    kind: str  # "synthetic-sharegpt" | "fixed" | "sharegpt"
    seed: int
    params: dict  # how it was made (distribution parameters, file, filters)

    def __post_init__(self):
        if len(self.prompts) != len(self.output_lens):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.output_lens)} output lengths")
        if not self.prompts:
            raise ValueError("a workload needs at least one request")
        if min(map(len, self.prompts)) < 1 or min(self.output_lens) < 1:
            raise ValueError("prompts and outputs must have at least one token")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def prompt_lens(self) -> list[int]:
        return [len(p) for p in self.prompts]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(self.prompt_lens)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    @property
    def max_total_len(self) -> int:
        return max(len(p) + o for p, o in zip(self.prompts, self.output_lens))

    def head(self, n: int) -> "Workload":
        """The first `n` requests (the same requests, in the same order)."""
        if not 1 <= n <= len(self):
            raise ValueError(f"head({n}) of a workload of {len(self)} requests")
        return dataclasses.replace(self, prompts=self.prompts[:n], output_lens=self.output_lens[:n],
                                   params={**self.params, "head_of": len(self)})

    def fingerprint(self) -> str:
        """sha256 of the exact requests (prompt ids and output lengths): equal workloads, equal hashes."""
        h = hashlib.sha256()
        for prompt, out in zip(self.prompts, self.output_lens):
            h.update(np.asarray(prompt, np.int64).tobytes())
            h.update(b"|%d;" % out)
        return h.hexdigest()

    def describe(self) -> dict:
        """The JSON description: kind, seed, parameters, counts, length statistics, fingerprint."""
        return dict(kind=self.kind, seed=self.seed, params=self.params, num_prompts=len(self),
                    prompt_len=summary(self.prompt_lens), output_len=summary(self.output_lens),
                    total_prompt_tokens=self.num_prompt_tokens, total_output_tokens=self.num_output_tokens,
                    fingerprint=self.fingerprint())


def keep(prompt_len: int, output_len: int, max_model_len: int) -> bool:
    """vLLM's ShareGPT filters, plus prompt + output <= max_model_len."""
    if prompt_len < MIN_LEN or output_len < MIN_LEN:
        return False
    if prompt_len > MAX_PROMPT_LEN or prompt_len + output_len > MAX_TOTAL_LEN:
        return False
    return prompt_len + output_len <= max_model_len


def _filters(max_model_len: int) -> dict:
    return dict(min_len=MIN_LEN, max_prompt_len=MAX_PROMPT_LEN, max_total_len=min(MAX_TOTAL_LEN, max_model_len))


def _random_ids(rng: np.random.Generator, n: int, vocab_size: int) -> tuple[int, ...]:
    return tuple(int(t) for t in rng.integers(0, vocab_size, size=n))


def synthetic_sharegpt(num_prompts: int, vocab_size: int, *, seed: int = 0, max_model_len: int = MAX_TOTAL_LEN,
                       **overrides) -> Workload:
    """`num_prompts` requests with ShareGPT-like log-normal lengths (module docstring); random prompt ids."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    if max_model_len < 2 * MIN_LEN:
        raise ValueError(f"max_model_len {max_model_len} is too short for ShareGPT-like requests (>= {2 * MIN_LEN})")
    dist = {**SYNTHETIC_SHAREGPT, **overrides}
    rng = np.random.default_rng(seed)
    lengths: list[tuple[int, int]] = []
    while len(lengths) < num_prompts:
        p = np.rint(rng.lognormal(dist["prompt_mu"], dist["prompt_sigma"], 4 * num_prompts)).astype(int)
        o = np.rint(rng.lognormal(dist["output_mu"], dist["output_sigma"], 4 * num_prompts)).astype(int)
        lengths += [(int(a), int(b)) for a, b in zip(p, o) if keep(int(a), int(b), max_model_len)]
    lengths = lengths[:num_prompts]
    prompts = tuple(_random_ids(rng, p, vocab_size) for p, _ in lengths)
    return Workload(prompts, tuple(o for _, o in lengths), "synthetic-sharegpt", seed,
                    dict(distribution="lognormal", **dist, filters=_filters(max_model_len), vocab_size=vocab_size))


def fixed_lengths(num_prompts: int, input_len: int, output_len: int, vocab_size: int, *, seed: int = 0) -> Workload:
    """`num_prompts` prompts of `input_len` random ids, each generating exactly `output_len` tokens."""
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        raise ValueError(f"num_prompts, input_len and output_len must be >= 1, got "
                         f"{num_prompts}, {input_len}, {output_len}")
    rng = np.random.default_rng(seed)
    prompts = tuple(_random_ids(rng, input_len, vocab_size) for _ in range(num_prompts))
    return Workload(prompts, (output_len,) * num_prompts, "fixed", seed,
                    dict(input_len=input_len, output_len=output_len, vocab_size=vocab_size))


def load_sharegpt(path: str, tokenizer, num_prompts: int, *, seed: int = 0,
                  max_model_len: int = MAX_TOTAL_LEN) -> Workload:
    """The first `num_prompts` ShareGPT conversations (shuffled with `seed`) that pass the filters."""
    if tokenizer is None:
        raise ValueError("--dataset needs a tokenizer: use a checkpoint directory that has one (presets have none)")
    with open(path) as f:
        data = json.load(f)
    convs = [d["conversations"] for d in data if len(d.get("conversations") or []) >= 2]
    random.Random(seed).shuffle(convs)
    prompts, outputs = [], []
    for conv in convs:
        prompt_ids = list(tokenizer(conv[0]["value"]).input_ids)
        output_len = len(tokenizer(conv[1]["value"], add_special_tokens=False).input_ids)
        if keep(len(prompt_ids), output_len, max_model_len):
            prompts.append(tuple(prompt_ids))
            outputs.append(output_len)
            if len(prompts) == num_prompts:
                break
    if len(prompts) < num_prompts:
        raise ValueError(f"{path}: only {len(prompts)} conversations pass the filters, {num_prompts} wanted")
    return Workload(tuple(prompts), tuple(outputs), "sharegpt", seed,
                    dict(path=path, num_conversations=len(convs), filters=_filters(max_model_len)))
