"""Our Flax models against HF transformers (PyTorch CPU, float32) on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from models.loader import load_model
from pagedjax.static_generate import StaticGenerator, forward_logits
from tests.checkpoints import VARIANTS, tokenizer

# float32 on both sides; differences come from op order (matmul blocking, rope, softmax).
# Observed max |diff| ~1e-5 on logits of magnitude ~10; 1e-4 leaves headroom without hiding bugs.
LOGITS_ATOL = 1e-4
PROMPTS = [
    "Return the value",  # short
    "The quick brown fox jumps over the lazy dog while the socket server keeps listening.",
    "Decimal fixed point and floating point arithmetic: the decimal module provides support for "
    "fast correctly rounded decimal floating point arithmetic, with many more features than float.",
]


def _hf_model(model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_hf(variant, checkpoint_factory):
    model_dir = checkpoint_factory(variant)
    hf = _hf_model(model_dir)
    ours, cfg, _ = load_model(model_dir, dtype="float32")
    tok = tokenizer()
    for text in PROMPTS:
        ids = tok(text).input_ids
        if variant == "llama-rope-dynamic":
            # HF scales every prompt token by the prompt's full length (see models/rope.py);
            # within max_position_embeddings both agree, beyond it the greedy test checks decoding.
            ids = ids[: cfg.max_position_embeddings]
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].numpy()
        got = np.asarray(forward_logits(ours, np.array([ids])))[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=LOGITS_ATOL, rtol=0,
                                   err_msg=f"{variant}: logits differ for a prompt of {len(ids)} tokens")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_32_tokens_match_hf_generate(variant, checkpoint_factory):
    model_dir = checkpoint_factory(variant)
    ours, cfg, _ = load_model(model_dir, dtype="float32")
    gen = StaticGenerator(ours, max_len=256)
    tok = tokenizer()
    prompts = [tok(t).input_ids for t in PROMPTS[:2]]
    if variant == "llama-rope-dynamic":
        prompts = [p[: cfg.max_position_embeddings] for p in prompts]  # decode past the original length
    got = gen.generate(prompts, max_new_tokens=32, ignore_eos=True)
    for ids, ours_out in zip(prompts, got):
        hf = _hf_model(model_dir)  # fresh: HF's dynamic rope keeps state from earlier calls
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                              pad_token_id=0)
        want = out[0, len(ids):].tolist()
        assert ours_out == want, f"{variant}: greedy tokens differ"
        assert len(set(want)) > 3, "greedy output collapsed; the test would be too weak"
