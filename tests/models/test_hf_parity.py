"""Our Flax models against HF transformers (PyTorch CPU, float32) on tiny random checkpoints of
every family and variant: logits of a full forward pass, and greedy decoding on the contiguous cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.loader import load_model
from pagedjax.static_generate import StaticGenerator, forward_logits
from tests.checkpoints import VARIANTS
from tests.models.conftest import GREEDY_TOKENS, hf_model, prompt_ids

# float32 on both sides; differences come from op order (matmul blocking, rope, softmax).
# Observed max |diff| ~1e-5 on logits of magnitude ~10; 1e-4 leaves headroom without hiding bugs.
LOGITS_ATOL = 1e-4


def _prompts(variant: str, max_position_embeddings: int) -> list[list[int]]:
    if variant == "llama-rope-dynamic":
        # HF scales every prompt token by the prompt's full length (see models/blocks/rope.py);
        # within max_position_embeddings both agree, beyond it the greedy test checks decoding.
        return prompt_ids(max_position_embeddings)
    return prompt_ids()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_hf(variant, checkpoint_factory):
    model_dir = checkpoint_factory(variant)
    ours, cfg, _ = load_model(model_dir, dtype="float32")
    prompts = _prompts(variant, cfg.max_position_embeddings)
    width = max(map(len, prompts))
    batch = np.zeros((len(prompts), width), np.int32)  # right-padded: causal, so padding changes nothing before it
    for i, ids in enumerate(prompts):
        batch[i, : len(ids)] = ids
    got = np.asarray(forward_logits(ours, batch))  # one compile for all prompts
    hf = hf_model(model_dir)
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(want).max() > 0.5, "logits too small to tell anything apart"
        np.testing.assert_allclose(got[i, : len(ids)], want, atol=LOGITS_ATOL, rtol=0,
                                   err_msg=f"{variant}: logits differ for a prompt of {len(ids)} tokens")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_32_tokens_match_hf_generate(variant, checkpoint_factory, hf_greedy):
    model_dir = checkpoint_factory(variant)
    ours, cfg, _ = load_model(model_dir, dtype="float32")
    prompts = _prompts(variant, cfg.max_position_embeddings)[:2]  # dynamic rope decodes past the original length
    got = StaticGenerator(ours, max_len=160).generate(prompts, max_new_tokens=GREEDY_TOKENS, ignore_eos=True)
    want = hf_greedy(variant, prompts)
    for ours_out, hf_out in zip(got, want):
        assert len(set(hf_out)) > 3, f"{variant}: greedy output collapsed; the test would be too weak"
    assert got == want, f"{variant}: greedy tokens differ"
