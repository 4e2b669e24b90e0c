"""Every family through the paged engine: 32 greedy tokens of `LLM.generate` on a mixed batch
(prompts of several lengths, chunked prefill beside decodes) equal HF `generate`.

Attention beyond plain causal softmax (ALiBi, soft-caps, sliding windows, GPT-OSS's sinks) runs
through the paged kernels' `AttentionSpec` support.
"""

from __future__ import annotations

import pytest

from pagedjax import LLM, SamplingParams
from tests.checkpoints import tokenizer
from tests.models.conftest import GREEDY_TOKENS

# One variant for each distinct block of the packed [tokens, hidden] path (every family's forward
# is checked against HF in test_hf_parity.py; Llama itself in tests/engine): learned positions
# and Conv1D qkv, post-norm with project_in/out, partial and interleaved rotary with parallel
# blocks, grouped qkv, per-head / all-heads q/k norms, (1 + w) norms, multipliers; then the
# ALiBi, soft-cap and window families; the mixtures of experts (routed compute over packed
# tokens, a shared expert and a dense layer, q/k norms, GPT-OSS's sinks and alternating windows).
FAMILY_VARIANTS = ["gpt2", "opt-350m-post-norm", "gpt-neox", "gptj", "falcon-new-decoder", "stablelm", "olmo2",
                   "phi", "gemma", "granite",
                   "bloom", "mpt", "falcon-rw-alibi", "gemma2", "gemma3", "phi3-window-partial", "starcoder2-window",
                   "mixtral", "qwen2-moe", "qwen3-moe", "gpt-oss"]
TEXTS = ["Return the value", "The quick brown fox jumps over the lazy dog"]
# Small limits keep the compiled buckets to two: a 16-token mixed step (the 27-token prompt
# chunks at 16, beside the other's decodes) and a decode step, over one block-table width.
ENGINE_ARGS = dict(num_kv_blocks=16, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=16, block_size=16)


def test_prompts_mix_lengths_and_chunk():
    lengths = [len(tokenizer()(t).input_ids) for t in TEXTS]
    assert lengths[0] < 16 < lengths[-1] and lengths[-1] + GREEDY_TOKENS <= ENGINE_ARGS["max_model_len"], lengths


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_engine_greedy_matches_hf(variant, checkpoint_factory, hf_greedy):
    prompts = [tokenizer()(t).input_ids for t in TEXTS]
    llm = LLM(checkpoint_factory(variant), **ENGINE_ARGS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outs] == hf_greedy(variant, prompts)
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"], stats
