"""The stop token that ends a completion (EOS or one of `stop_token_ids`) stays in `token_ids` but
not in the text, streamed or not, even with `skip_special_tokens=False` (vLLM's rule), unless
`include_stop_str_in_output`."""

from __future__ import annotations

import pytest

from pagedjax.llm import LLM
from pagedjax.sampling_params import SamplingParams

PROMPT = {"prompt_token_ids": [1, 77, 78, 79]}


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, num_kv_blocks=32, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=64)


def _streamed_text(llm, params) -> tuple[str, list[int]]:
    engine = llm.engine
    engine.add_request("stream-stop", None, params, prompt_token_ids=PROMPT["prompt_token_ids"], stream=True)
    last = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            last = out
    return last.outputs[0].text, list(last.outputs[0].token_ids)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
@pytest.mark.parametrize("include", [False, True])
def test_stop_token_text(llm, skip_special_tokens, include):
    base = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0].token_ids
    decode = llm.get_tokenizer().decode
    # a stop token with a clean text of its own (no half of a multi-byte character at the cut)
    stop_at = next(t for t in base[2:] if decode([t]).strip().isascii() and decode([t]).strip().isalpha())
    cut = base[:base.index(stop_at) + 1]
    for stop in ({"stop_token_ids": [stop_at]}, {"regex_eos": True}):
        if "regex_eos" in stop:  # a grammar that ends: EOS comes right after it
            params = SamplingParams(temperature=0.0, max_tokens=12, skip_special_tokens=skip_special_tokens,
                                    include_stop_str_in_output=include, structured_outputs={"regex": "[a-z]{2}"})
        else:
            params = SamplingParams(temperature=0.0, max_tokens=12, skip_special_tokens=skip_special_tokens,
                                    include_stop_str_in_output=include, **stop)
        whole = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
        streamed_text, streamed_ids = _streamed_text(llm, params)
        ids = list(whole.token_ids)
        if "stop_token_ids" in stop:
            assert ids == cut and whole.stop_reason == stop_at
        assert streamed_ids == ids and whole.finish_reason == "stop"
        kept = ids if include else ids[:-1]
        assert whole.text == streamed_text == decode(kept, skip_special_tokens=skip_special_tokens)
