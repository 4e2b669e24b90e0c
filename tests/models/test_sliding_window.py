"""Mistral v0.1-style sliding windows (every layer windowed) through the engine: greedy output
equals HF `generate` on prompts several windows long, with the reference backend and with the
Pallas kernels in interpret mode; the model keeps its whole context (no max_model_len cap), and
the block manager gives back blocks wholly behind the window while the sequences run."""

from __future__ import annotations

import pytest

from pagedjax import LLM, SamplingParams
from tests.checkpoints import tokenizer
from tests.models.conftest import GREEDY_TOKENS

TEXTS = ["Return the value", "The quick brown fox jumps over the lazy dog and then some more"]
ENGINE_ARGS = dict(num_kv_blocks=24, max_model_len=96, max_num_seqs=4, max_num_batched_tokens=16, block_size=16)


def _run(llm, prompts):
    """Greedy completions, and the most KV blocks in use after any step."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), None, params, prompt_token_ids=p)
    done, peak = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        stats = llm.stats()
        peak = max(peak, stats["num_kv_blocks"] - stats["num_free_kv_blocks"])
    return [done[str(i)] for i in range(len(prompts))], peak


@pytest.mark.parametrize("backend", ["reference", "pallas_interpret"])
@pytest.mark.parametrize("variant,window", [("mistral-window5", 5), ("mistral-window20", 20)])
def test_windowed_mistral_matches_hf_and_frees_blocks(variant, window, backend, checkpoint_factory, hf_greedy):
    prompts = [tokenizer()(t).input_ids for t in TEXTS]
    assert len(prompts[-1]) >= 16 + window  # the long prompt chunks, and spans windows
    llm = LLM(checkpoint_factory(variant), attention_backend=backend, **ENGINE_ARGS)
    assert llm.engine.max_model_len == ENGINE_ARGS["max_model_len"] > window  # whole context kept
    outs, peak = _run(llm, prompts)
    assert outs == hf_greedy(variant, prompts)
    # A full-attention cache ends holding every position's block; the window keeps only the
    # blocks some position still to compute attends to (plus the one being written).
    full = sum(-(-(len(p) + GREEDY_TOKENS) // 16) for p in prompts)
    windowed = len(prompts) * (-(-window // 16) + 1)
    assert peak <= windowed < full, (peak, windowed, full)
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_window_changes_the_output(checkpoint_factory, hf_greedy):
    """The window matters on these prompts (so the parity above checks it)."""
    prompts = [tokenizer()(TEXTS[-1]).input_ids]
    assert hf_greedy("mistral-window5", prompts) != hf_greedy("mistral", prompts)
