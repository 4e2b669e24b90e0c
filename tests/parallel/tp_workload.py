"""The workload the tensor-parallel tests compare token for token, and a runner for it.

Mixed on purpose: prompts longer than the token budget (chunked prefill), two prompts sharing a
prefix (prefix-cache hits), and a request with n=2 whose completions fork from one prefill
(copy-on-write of the shared last block: `ModelRunner.copy_blocks` on the sharded pool).
"""

from __future__ import annotations

from pagedjax import LLM, SamplingParams
from tests.checkpoints import tokenizer

TEXTS = [
    "The quick brown fox",
    "Return a new dictionary initialized from an optional positional argument and keyword arguments.",
    "import os",
    "Simple is better than complex. Complex is better than complicated. Flat is better than nested.",
    "Simple is better than complex. Complex is better than complicated. Sparse is better than dense.",
]
# Small limits keep the compiled buckets to three (decode, a 16-token step, the block copy).
ENGINE_ARGS = dict(num_kv_blocks=48, max_model_len=64, max_num_seqs=8, max_num_batched_tokens=16, block_size=16)


def prompts(texts=TEXTS) -> list[dict]:
    tok = tokenizer()
    return [{"prompt_token_ids": tok(t).input_ids} for t in texts]


def run_workload(model_dir: str, tp: int, *, backend: str = "reference", max_tokens: int = 16,
                 texts=TEXTS, fork: bool = True, **engine_args) -> tuple[list[list[int]], LLM]:
    """Greedy completions (one list of token ids per completion, in order) and the LLM."""
    llm = LLM(model_dir, tensor_parallel_size=tp, attention_backend=backend, **{**ENGINE_ARGS, **engine_args})
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    params = [greedy] * len(texts)
    if fork:  # the last request: two completions forked from one prefill
        params[-1] = SamplingParams(n=2, temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate(prompts(texts), params, use_tqdm=False)
    return [list(c.token_ids) for out in outs for c in out.outputs], llm
