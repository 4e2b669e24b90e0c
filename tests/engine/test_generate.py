"""The paged engine's greedy output equals HF `generate`, under every scheduling condition."""

from __future__ import annotations

import pytest

from pagedjax import LLM, SamplingParams
from tests.engine.conftest import GEN_TOKENS

GREEDY = SamplingParams(temperature=0.0, max_tokens=GEN_TOKENS, ignore_eos=True)


def _generate(llm, prompts, params=GREEDY):
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def _assert_no_leak(llm):
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"], stats


def test_mixed_lengths_match_hf(llama_dir, prompts, hf_reference):
    llm = LLM(llama_dir, num_kv_blocks=128, max_model_len=256, max_num_seqs=16)
    assert len(prompts) >= 8 and len({len(p) for p in prompts}) >= 6
    got = _generate(llm, prompts)
    assert got == hf_reference
    _assert_no_leak(llm)


def test_preemption_keeps_outputs(llama_dir, prompts, hf_reference):
    # 12 blocks of 16 tokens cannot hold 9 sequences of 2..126 tokens at once: requests get preempted.
    llm = LLM(llama_dir, num_kv_blocks=12, max_model_len=128, max_num_seqs=16)
    got = _generate(llm, prompts)
    assert llm.stats()["num_preemptions"] > 0
    assert got == hf_reference
    _assert_no_leak(llm)


def test_chunked_prefill_keeps_outputs(llama_dir, prompts, hf_reference):
    llm = LLM(llama_dir, num_kv_blocks=128, max_model_len=256, max_num_batched_tokens=16, max_num_seqs=16)
    assert max(len(p) for p in prompts) > 16  # the longest prompts take several steps
    assert _generate(llm, prompts) == hf_reference
    _assert_no_leak(llm)


def test_prefix_cache_hits_keep_outputs(llama_dir, shared_prefix_prompts, hf_reference_shared):
    llm = LLM(llama_dir, num_kv_blocks=128, max_model_len=256, max_num_seqs=16)
    first = _generate(llm, shared_prefix_prompts[:1])  # fills the cache with the shared prefix
    rest = _generate(llm, shared_prefix_prompts[1:])
    stats = llm.stats()
    assert stats["prefix_cache_hits"] >= 16 * (len(shared_prefix_prompts) - 1), stats
    assert first + rest == hf_reference_shared
    _assert_no_leak(llm)


def test_pallas_interpret_backend_matches_hf(llama_dir, prompts, hf_reference):
    llm = LLM(llama_dir, num_kv_blocks=32, max_model_len=128, max_num_seqs=4, max_num_batched_tokens=32,
              attention_backend="pallas_interpret")
    few = [0, 2, 3]
    got = _generate(llm, [prompts[i] for i in few], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert got == [hf_reference[i][:8] for i in few]
    _assert_no_leak(llm)
