"""Our Flax models against HF transformers (PyTorch CPU, float32) on tiny random checkpoints of
every family and variant: the logits of every prompt position, and 32 greedy tokens decoded on
the contiguous cache (`StaticGenerator`), from one prefill (two compiles per variant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.loader import load_model
from pagedjax.static_generate import StaticGenerator
from tests.checkpoints import VARIANTS
from tests.models.conftest import GREEDY_TOKENS, hf_model, prompt_ids

# float32 on both sides; differences come from op order (matmul blocking, rope, softmax).
# Observed max |diff| ~1e-5 on logits of magnitude ~10; 1e-4 leaves headroom without hiding bugs.
LOGITS_ATOL = 1e-4


def variant_prompts(variant: str, max_position_embeddings: int) -> list[list[int]]:
    """The test prompts; for dynamic NTK rope cut to max_position_embeddings: HF scales every token
    of a longer prompt by the prompt's full length (models/blocks/rope.py), and decoding past
    the original length is what the greedy comparison then checks."""
    if variant == "llama-rope-dynamic":
        return prompt_ids(max_position_embeddings)
    return prompt_ids()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_greedy_match_hf(variant, checkpoint_factory, hf_greedy):
    model_dir = checkpoint_factory(variant)
    ours, cfg, _ = load_model(model_dir, dtype="float32")
    prompts = variant_prompts(variant, cfg.max_position_embeddings)
    got_tokens, got_logits = StaticGenerator(ours, max_len=160).generate(
        prompts, max_new_tokens=GREEDY_TOKENS, ignore_eos=True, return_prompt_logits=True)
    hf = hf_model(model_dir)
    for ids, got in zip(prompts, got_logits):
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(want).max() > 0.5, "logits too small to tell anything apart"
        np.testing.assert_allclose(got, want, atol=LOGITS_ATOL, rtol=0,
                                   err_msg=f"{variant}: logits differ for a prompt of {len(ids)} tokens")
    want_tokens = hf_greedy(variant, prompts)
    for hf_out in want_tokens:
        assert len(set(hf_out)) > 3, f"{variant}: greedy output collapsed; the test would be too weak"
    assert got_tokens == want_tokens, f"{variant}: greedy tokens differ"
