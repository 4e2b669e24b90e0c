"""Engine fixtures: the tiny Llama checkpoint, prompts of mixed lengths, and HF greedy references."""

from __future__ import annotations

import pytest

from tests.checkpoints import tokenizer

GEN_TOKENS = 24
TEXTS = [
    "a",
    "The quick brown fox",
    "Return a new dictionary initialized from an optional positional argument and keyword arguments.",
    "import os",
    "Decimal fixed point and floating point arithmetic",
    "The module provides",
    "Create a new thread pool executor with at most max_workers threads; tasks submitted run in the pool "
    "and their futures resolve when they finish, even when the interpreter is shutting down.",
    "x = 1",
    "Simple is better than complex. Complex is better than complicated. Flat is better than nested.",
]
SHARED_PREFIX = ("Beautiful is better than ugly. Explicit is better than implicit. Simple is better than "
                 "complex. Complex is better than complicated. Flat is better than nested. ")


def hf_greedy(model_dir: str, prompts: list[list[int]], max_new_tokens: int = GEN_TOKENS) -> list[list[int]]:
    """HF transformers `generate` (greedy, float32, one prompt at a time, EOS ignored)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=0)
        outs.append(out[0, len(ids):].tolist())
    return outs


@pytest.fixture(scope="session")
def prompts() -> list[list[int]]:
    tok = tokenizer()
    return [tok(t).input_ids for t in TEXTS]


@pytest.fixture(scope="session")
def shared_prefix_prompts() -> list[list[int]]:
    tok = tokenizer()
    return [tok(SHARED_PREFIX + t).input_ids for t in TEXTS[:6]]


@pytest.fixture(scope="session")
def hf_reference(llama_dir, prompts):
    return hf_greedy(llama_dir, prompts)


@pytest.fixture(scope="session")
def hf_reference_shared(llama_dir, shared_prefix_prompts):
    return hf_greedy(llama_dir, shared_prefix_prompts)
