"""Model-test fixtures: prompts, and HF references computed once per variant per session."""

from __future__ import annotations

import pytest

from tests.checkpoints import reference_dir, tokenizer

GREEDY_TOKENS = 32
PROMPTS = [
    "Return the value",  # short
    "The quick brown fox jumps over the lazy dog while the socket server keeps listening.",
    "Decimal fixed point and floating point arithmetic: the decimal module provides support for "
    "fast correctly rounded decimal floating point arithmetic, with many more features than float.",
]


def hf_model(model_dir: str):
    """The HF transformers model (float32, eval) the checkpoint in `model_dir` is compared with."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(reference_dir(model_dir), dtype=torch.float32).eval()


def prompt_ids(max_len: int | None = None) -> list[list[int]]:
    tok = tokenizer()
    return [tok(t).input_ids[:max_len] for t in PROMPTS]


@pytest.fixture(scope="session")
def hf_greedy(checkpoint_factory):
    """`hf_greedy(variant, prompts)` -> HF `generate` greedy continuations (GREEDY_TOKENS, EOS ignored), cached."""
    import torch

    cache = {}

    def one(variant: str, ids: tuple[int, ...]) -> list[int]:
        if (variant, ids) not in cache:  # per prompt: test files with different prompt lists share them
            model = hf_model(checkpoint_factory(variant))  # fresh: HF's dynamic rope keeps state
            model.generation_config.eos_token_id = None  # EOS neither stops nor is suppressed (ignore_eos)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                     pad_token_id=0)
            cache[variant, ids] = out[0, len(ids):].tolist()
            assert len(cache[variant, ids]) == GREEDY_TOKENS
        return cache[variant, ids]

    def get(variant: str, prompts: list[list[int]]) -> list[list[int]]:
        return [list(one(variant, tuple(ids))) for ids in prompts]

    return get
