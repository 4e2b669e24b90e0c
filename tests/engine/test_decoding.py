"""vLLM's decoding surface on the engine: logprobs, seeds, n/best_of with shared blocks, beam
search, chat, stop strings, min_tokens and finish reasons; checked against HF where HF has it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from pagedjax import BeamSearchParams, LLM, SamplingParams
from pagedjax.beam_search import BeamSearchStats
from pagedjax.detokenizer import IncrementalDetokenizer
from tests.checkpoints import tokenizer

LOGPROB_ATOL = 1e-4  # float32 on both sides (see tests/models/test_hf_parity.py)


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(llama_dir, num_kv_blocks=160, max_model_len=256, max_num_seqs=16, max_num_batched_tokens=128)


@pytest.fixture(scope="module")
def hf(llama_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # compare without EOS handling (we pass ignore_eos)
    return model


def _ids(text):
    return tokenizer()(text).input_ids


def _no_leak(llm):
    s = llm.stats()
    assert s["num_free_kv_blocks"] == s["num_kv_blocks"]


def test_logprobs_and_prompt_logprobs_equal_hf_log_softmax(llm, hf):
    prompt = _ids("The module provides functions for working with paths")
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=5, prompt_logprobs=3)
    (out,) = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)
    comp = out.outputs[0]
    full = prompt + comp.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([full])).logits[0], -1).numpy()  # [len, V]
    for j, (token, entry) in enumerate(zip(comp.token_ids, comp.logprobs)):
        row = ref[len(prompt) - 1 + j]
        assert token in entry and len(entry) >= 5
        top5 = np.argsort(-row)[:5]
        assert set(top5) <= set(entry)
        for tid, lp in entry.items():
            assert abs(lp.logprob - row[tid]) < LOGPROB_ATOL
            assert lp.rank == int((row > row[tid]).sum()) + 1
    assert abs(comp.cumulative_logprob - sum(ref[len(prompt) - 1 + j, t] for j, t in enumerate(comp.token_ids))) < 1e-3
    plp = out.prompt_logprobs
    assert plp[0] is None and len(plp) == len(prompt)
    for p in range(1, len(prompt)):
        entry = plp[p]
        assert prompt[p] in entry
        for tid, lp in entry.items():
            assert abs(lp.logprob - ref[p - 1, tid]) < LOGPROB_ATOL


def test_prompt_logprobs_survive_chunked_prefill(llama_dir, hf):
    llm = LLM(llama_dir, num_kv_blocks=64, max_model_len=128, max_num_batched_tokens=16)
    prompt = _ids("Return a new dictionary initialized from an optional positional argument and keyword args.")
    assert len(prompt) > 16
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=2,
                                                                       prompt_logprobs=0), use_tqdm=False)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0], -1).numpy()
    got = [out.prompt_logprobs[p][prompt[p]].logprob for p in range(1, len(prompt))]
    np.testing.assert_allclose(got, [ref[p - 1, prompt[p]] for p in range(1, len(prompt))], atol=LOGPROB_ATOL)


def test_seeds_reproduce_across_runs_and_batch_compositions(llm):
    prompt = {"prompt_token_ids": _ids("Flat is better than nested")}
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(prompt, seeded, use_tqdm=False)[0].outputs[0].token_ids
    again = llm.generate(prompt, seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = [{"prompt_token_ids": _ids(t)} for t in ("x", "The quick brown fox jumps over", "import re")]
    mixed = llm.generate(others + [prompt] + others,
                         [SamplingParams(temperature=0.7, max_tokens=20, ignore_eos=True)] * 3 + [seeded] +
                         [SamplingParams(temperature=0.0, max_tokens=5)] * 3, use_tqdm=False)
    assert alone == again == mixed[3].outputs[0].token_ids
    other_seed = llm.generate(prompt, SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16,
                                                     ignore_eos=True), use_tqdm=False)[0].outputs[0].token_ids
    assert other_seed != alone
    _no_leak(llm)


def _peak_blocks(llm, prompts, params):
    engine = llm.engine
    peak, copies = [0], [0]

    def observe(sched):
        s = engine.scheduler.stats()
        peak[0] = max(peak[0], s["num_kv_blocks"] - s["num_free_kv_blocks"])
        copies[0] += len(sched.blocks_to_copy)

    engine.step_observers.append(observe)
    try:
        outs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        engine.step_observers.remove(observe)
    return outs, peak[0], copies[0]


def test_parallel_sampling_shares_prompt_blocks(llama_dir, hf):
    llm = LLM(llama_dir, num_kv_blocks=160, max_model_len=256, max_num_seqs=16, enable_prefix_caching=False)
    text = ("Create a new thread pool executor with at most max_workers threads; tasks submitted run in the "
            "pool and their futures resolve when they finish, even when the interpreter is shutting down.")
    prompt = _ids(text)
    assert len(prompt) % 16 != 0  # a partly filled last block, shared then copied on write
    greedy4 = SamplingParams(n=4, temperature=0.0, max_tokens=12, ignore_eos=True)
    (out,), shared_peak, copies = _peak_blocks(llm, {"prompt_token_ids": prompt}, greedy4)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    ref = ref[0, len(prompt):].tolist()
    assert [c.token_ids for c in out.outputs] == [ref] * 4  # copy-on-write kept every sample's context
    assert copies >= 3
    separate, separate_peak, _ = _peak_blocks(llm, [{"prompt_token_ids": prompt}] * 4,
                                              SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in separate] == [ref] * 4
    prompt_blocks = -(-len(prompt) // 16)
    assert shared_peak <= prompt_blocks + 4 * 2 and separate_peak >= 4 * prompt_blocks
    print(f"n=4 on a {len(prompt)}-token prompt: peak {shared_peak} KV blocks shared vs {separate_peak} separate")
    _no_leak(llm)


def test_n_and_best_of_sampled(llm):
    prompt = {"prompt_token_ids": _ids("Errors should never pass silently")}
    (out,) = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True),
                          use_tqdm=False)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3  # distinct random streams
    (again,) = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10, ignore_eos=True),
                            use_tqdm=False)
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    (best,) = llm.generate(prompt, SamplingParams(n=2, best_of=5, temperature=1.0, seed=3, max_tokens=6,
                                                  ignore_eos=True), use_tqdm=False)
    assert len(best.outputs) == 2
    assert best.outputs[0].cumulative_logprob >= best.outputs[1].cumulative_logprob
    _no_leak(llm)


def test_n_with_a_single_token(llm):
    (out,) = llm.generate({"prompt_token_ids": [1, 5, 6]}, SamplingParams(n=3, temperature=1.0, max_tokens=1,
                                                                          seed=0), use_tqdm=False)
    assert [len(c.token_ids) for c in out.outputs] == [1, 1, 1]
    assert all(c.finish_reason == "length" for c in out.outputs)
    _no_leak(llm)


def test_beam_search_best_beam_equals_hf(llm, hf):
    prompts = [_ids("The quick brown fox jumps over the lazy dog"), _ids("import os")]
    stats = BeamSearchStats()
    outs = llm.beam_search([{"prompt_token_ids": p} for p in prompts],
                           BeamSearchParams(beam_width=4, max_tokens=12, ignore_eos=True), stats=stats)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), num_beams=4, max_new_tokens=12, do_sample=False,
                              pad_token_id=0, num_return_sequences=4)
        assert out.sequences[0].token_ids == ref[0, len(prompt):].tolist()
        assert len(out.sequences) == 4
        scores = [s.cumulative_logprob for s in out.sequences]
        assert scores == sorted(scores, reverse=True)
    assert stats.peak_shared_blocks < stats.peak_unshared_blocks
    print(f"beam search: peak {stats.peak_shared_blocks} blocks shared vs {stats.peak_unshared_blocks} "
          f"unshared ({100 * stats.saved_fraction:.0f}% saved)")
    _no_leak(llm)


def test_chat_uses_the_template(llm):
    messages = [{"role": "user", "content": "What is better than ugly?"}]
    params = SamplingParams(temperature=0.0, max_tokens=8)
    (out,) = llm.chat(messages, params, use_tqdm=False)
    ids = tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert out.prompt_token_ids == list(ids)
    (ref,) = llm.generate({"prompt_token_ids": list(ids)}, params, use_tqdm=False)
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    outs = llm.chat([messages, [{"role": "system", "content": "Be terse."}] + messages], params, use_tqdm=False)
    assert len(outs) == 2 and outs[0].outputs[0].token_ids == ref.outputs[0].token_ids
    with pytest.raises(ValueError, match="conversation must be a list"):
        llm.chat(["not a message"], params, use_tqdm=False)


def _greedy_with_pieces(llm, prompt, n=24):
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=n,
                                                                       ignore_eos=True), use_tqdm=False)
    tokens, text = out.outputs[0].token_ids, out.outputs[0].text
    detok = IncrementalDetokenizer(llm.get_tokenizer(), prompt)
    ends = []
    for t in tokens:
        detok.push([t])
        ends.append(len(detok.text))  # where each token's text ends
    assert detok.text == text
    return tokens, text, ends


def test_stop_strings_spanning_tokens(llm):
    prompt = _ids("Simple is better than complex. Complex is better than")
    tokens, text, ends = _greedy_with_pieces(llm, prompt)
    # a 3-character stop string that starts inside one token and ends inside a later one
    k = next(k for k in range(1, len(text) - 3) if any(k < e < k + 3 for e in ends)
             and text[k:k + 3].isprintable() and "\ufffd" not in text[k:k + 3] and text.find(text[k:k + 3]) == k)
    stop = text[k:k + 3]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop])
    (out,) = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)
    c = out.outputs[0]
    assert c.text == text[:k] and c.finish_reason == "stop" and c.stop_reason == stop
    assert tokens[: len(c.token_ids)] == c.token_ids and len(c.token_ids) < len(tokens)
    (kept,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(
        temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop], include_stop_str_in_output=True),
        use_tqdm=False)
    assert kept.outputs[0].text == text[: k + 3]
    _no_leak(llm)


def test_min_tokens_eos_and_ignore_eos(llm):
    engine = llm.engine
    prompt = _ids("Now is better than never")
    tokens, _, _ = _greedy_with_pieces(llm, prompt, 12)
    saved = engine.eos_token_id
    engine.eos_token_id = tokens[0]  # make the first greedy token the end-of-sequence token
    try:
        (eos,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.0, max_tokens=12),
                              use_tqdm=False)
        assert eos.outputs[0].token_ids == tokens[:1]
        assert (eos.outputs[0].finish_reason, eos.outputs[0].stop_reason) == ("stop", None)
        (ignored,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(
            temperature=0.0, max_tokens=12, ignore_eos=True), use_tqdm=False)
        assert ignored.outputs[0].token_ids == tokens and ignored.outputs[0].finish_reason == "length"
        (minimum,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(
            temperature=0.0, max_tokens=12, min_tokens=5), use_tqdm=False)
        out = minimum.outputs[0].token_ids
        assert len(out) >= 5 and tokens[0] not in out[:5]  # EOS suppressed before min_tokens
    finally:
        engine.eos_token_id = saved
    stop_tok = tokens[3]
    (stopped,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(
        temperature=0.0, max_tokens=12, stop_token_ids=[stop_tok], min_tokens=tokens.index(stop_tok) + 1),
        use_tqdm=False)
    assert stop_tok not in stopped.outputs[0].token_ids[: tokens.index(stop_tok) + 1]
    _no_leak(llm)


def test_detokenizer_never_emits_half_characters():
    tok = tokenizer()
    text = "naïve café — 日本語のテキスト ✓ done"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tok, [1])
    pieces = [detok.push([t]) for t in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == detok.text


def test_detokenizer_holds_back_possible_stop_prefixes():
    tok = tokenizer()
    ids = tok("alpha beta gamma", add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(tok, [1], stop=["beta g"])
    streamed = "".join(detok.push([t]) for t in ids)
    assert detok.stop_string == "beta g" and detok.text == "alpha " and streamed == "alpha "
    assert "b" not in streamed  # never streamed part of the stop string
