"""Asynchronous scheduling (on by default) gives exactly the outputs of synchronous scheduling:
greedy, seeded sampling, n / best_of, penalties, min_tokens, stop strings and stop tokens, logprobs
and prompt logprobs, beam search, under preemption (a tiny pool), chunked prefill and aborts."""

from __future__ import annotations

import pytest

from pagedjax import LLM, BeamSearchParams, SamplingParams
from tests.checkpoints import tokenizer
from tests.engine.conftest import SHARED_PREFIX, TEXTS

# A tiny pool and budget: preemption and chunked prefill happen.
TIGHT = dict(num_kv_blocks=12, max_model_len=128, max_num_seqs=6, max_num_batched_tokens=32)


def _workload(llm):
    tok = tokenizer()
    prompts = [tok(SHARED_PREFIX + t).input_ids if i % 2 else tok(t).input_ids for i, t in enumerate(TEXTS)]
    # Stops the random model's greedy continuations really reach: a string from prompt 4's and
    # a token from prompt 7's (both after a few tokens), so both kinds of stop are exercised.
    greedy = SamplingParams(temperature=0.0, max_tokens=18, ignore_eos=True)
    probe = llm.generate([{"prompt_token_ids": prompts[i]} for i in (4, 7)], greedy, use_tqdm=False)
    stop_text = tok.decode(probe[0].outputs[0].token_ids[5:7])
    stop_token = probe[1].outputs[0].token_ids[6]
    params = [
        SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=16, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=5, n=3, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.7, seed=8, n=2, best_of=4, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=18, stop=[stop_text, "\x00never"], logprobs=3),
        SamplingParams(temperature=1.0, seed=1, max_tokens=14, presence_penalty=0.5, frequency_penalty=0.3,
                       repetition_penalty=1.3, min_tokens=6, ignore_eos=False),
        SamplingParams(temperature=0.0, max_tokens=9, prompt_logprobs=2, logprobs=1, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=15, stop_token_ids=[stop_token], min_tokens=2),
        SamplingParams(temperature=0.6, seed=13, top_k=7, min_p=0.05, max_tokens=11, ignore_eos=True),
    ]
    return prompts, params


def _summary(outputs):
    out = []
    for o in outputs:
        plp = None if o.prompt_logprobs is None else [None if e is None else sorted(e) for e in o.prompt_logprobs]
        out.append((plp, [(c.token_ids, c.text, c.finish_reason, c.stop_reason,
                           None if c.logprobs is None else [sorted(e) for e in c.logprobs],
                           round(c.cumulative_logprob, 3)) for c in o.outputs]))
    return out


@pytest.fixture(scope="module")
def runs(llama_dir):
    results = {}
    for mode in (False, True):
        llm = LLM(llama_dir, async_scheduling=mode, **TIGHT)
        prompts, params = _workload(llm)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        beams = llm.beam_search([{"prompt_token_ids": p} for p in prompts[:2]],
                                BeamSearchParams(beam_width=3, max_tokens=6))
        stats = llm.stats()
        assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
        results[mode] = dict(outs=_summary(outs), beams=[[(s.token_ids, s.cumulative_logprob) for s in b.sequences]
                                                          for b in beams], stats=stats, llm=llm)
    return results


def test_outputs_are_identical_in_both_modes(runs):
    assert runs[True]["outs"] == runs[False]["outs"]
    assert runs[True]["beams"] == runs[False]["beams"]


def test_the_workload_exercised_preemption_and_stops(runs):
    for mode in (False, True):
        assert runs[mode]["stats"]["num_preemptions"] > 0
        assert runs[mode]["stats"]["async_scheduling"] is mode
    reasons = {r for _, comps in runs[True]["outs"] for (_, _, r, _, _, _) in comps}
    assert reasons == {"stop", "length"}


def test_abort_while_a_step_is_in_flight(runs):
    llm = runs[True]["llm"]
    engine = llm.engine
    engine.add_request("keep", None, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                       prompt_token_ids=[5, 6, 7])
    engine.add_request("drop", None, SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True),
                       prompt_token_ids=[5, 6, 8])
    outputs = []
    for i in range(40):
        outputs += engine.step()
        if i == 2:
            assert engine.core.scheduler.num_in_flight >= 1
            assert engine.abort_request("drop")
        if not engine.has_unfinished_requests():
            break
    (keep,) = [o for o in outputs if o.request_id == "keep"]
    (ref,) = llm.generate({"prompt_token_ids": [5, 6, 7]},
                          SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert keep.outputs[0].token_ids == ref.outputs[0].token_ids
    assert not any(o.request_id == "drop" for o in outputs)
    stats = llm.stats()
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
