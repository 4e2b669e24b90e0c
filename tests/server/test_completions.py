"""`/v1/completions` with the official openai client: outputs equal the offline `LLM.generate`'s."""

from __future__ import annotations

import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import ALIAS, MODEL

PROMPTS = ["The quick brown fox", "Return a new dictionary initialized from", "import os", "x = 1"]


def reference(offline, prompt, **params):
    """The offline engine's RequestOutput for one prompt (a string or token ids)."""
    item = {"prompt_token_ids": prompt} if isinstance(prompt, list) else prompt
    (out,) = offline.generate(item, SamplingParams(**params), use_tqdm=False)
    return out


def test_models_health_version(client, http):
    assert [m.id for m in client.models.list().data] == [MODEL, ALIAS]
    card = client.models.retrieve(ALIAS)
    assert card.id == ALIAS and card.owned_by == "pagedjax" and card.max_model_len == 128
    assert http.get("/health").status_code == 200  # no API key needed
    assert http.get("/version").json()["version"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_offline(client, offline, prompt):
    res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0.0,
                                    extra_body={"return_token_ids": True})
    ref = reference(offline, prompt, temperature=0.0, max_tokens=12)
    (choice,) = res.choices
    assert choice.token_ids == ref.outputs[0].token_ids
    assert choice.text == ref.outputs[0].text
    assert choice.finish_reason == ref.outputs[0].finish_reason
    assert choice.prompt_token_ids == ref.prompt_token_ids
    assert res.object == "text_completion" and res.model == MODEL and res.id.startswith("cmpl-")
    assert res.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert res.usage.completion_tokens == len(ref.outputs[0].token_ids)
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def test_streaming_equals_non_streaming(client, offline):
    prompt = PROMPTS[1]
    ref = reference(offline, prompt, temperature=0.0, max_tokens=16, ignore_eos=True)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0.0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"return_token_ids": True, "ignore_eos": True}))
    *token_chunks, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 16
    assert usage_chunk.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert len(token_chunks) > 1 and all(c.usage is None for c in token_chunks)
    assert "".join(c.choices[0].text for c in token_chunks) == ref.outputs[0].text
    assert [t for c in token_chunks for t in c.choices[0].token_ids] == ref.outputs[0].token_ids
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * (len(token_chunks) - 1) + ["length"]
    assert len({c.id for c in chunks}) == 1


def test_prompt_forms(client, offline, tokenizer):
    ids = [tokenizer(p).input_ids for p in PROMPTS[:2]]
    refs = [reference(offline, p, temperature=0.0, max_tokens=6) for p in PROMPTS[:2]]
    for prompt in (PROMPTS[:2], ids):
        res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0.0)
        assert [c.index for c in res.choices] == [0, 1]
        assert [c.text for c in res.choices] == [r.outputs[0].text for r in refs]
        assert res.usage.prompt_tokens == sum(len(i) for i in ids)
    single = client.completions.create(model=MODEL, prompt=ids[0], max_tokens=6, temperature=0.0)
    assert single.choices[0].text == refs[0].outputs[0].text


def test_n_with_seed_equals_offline(client, offline):
    params = dict(temperature=0.9, top_p=0.95, seed=1234, max_tokens=8)
    ref = reference(offline, PROMPTS[0], n=3, **params)
    res = client.completions.create(model=MODEL, prompt=PROMPTS[0], n=3, **params)
    assert [c.index for c in res.choices] == [0, 1, 2]
    assert [c.text for c in res.choices] == [o.text for o in ref.outputs]
    assert len({c.text for c in res.choices}) > 1  # distinct samples
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[0], n=3, stream=True, **params)
    texts = {0: "", 1: "", 2: ""}
    for chunk in stream:
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
    assert [texts[i] for i in range(3)] == [o.text for o in ref.outputs]
    # two prompts, n=2: choice index = prompt * n + i
    two = client.completions.create(model=MODEL, prompt=PROMPTS[:2], n=2, **params)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert [c.text for c in two.choices[:2]] == [o.text for o in reference(offline, PROMPTS[0], n=2, **params).outputs]


def test_best_of_equals_offline(client, offline):
    params = dict(temperature=1.0, seed=5, max_tokens=6)
    ref = reference(offline, PROMPTS[2], n=1, best_of=3, **params)
    res = client.completions.create(model=MODEL, prompt=PROMPTS[2], n=1, best_of=3, **params)
    assert [c.text for c in res.choices] == [ref.outputs[0].text]


def test_logprobs_equal_engine_values(client, offline):
    ref = reference(offline, PROMPTS[0], temperature=0.0, max_tokens=8, logprobs=3)
    res = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0.0, logprobs=3)
    lp = res.choices[0].logprobs
    out = ref.outputs[0]
    assert len(lp.tokens) == len(out.token_ids) == 8
    offset = 0
    for i, (token_id, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert lp.tokens[i] == entry[token_id].decoded_token
        assert lp.token_logprobs[i] == pytest.approx(entry[token_id].logprob, abs=1e-5)
        expected_top = {e.decoded_token: e.logprob for e in entry.values()}
        assert lp.top_logprobs[i].keys() == expected_top.keys() and 3 <= len(lp.top_logprobs[i]) <= 4
        for text, value in lp.top_logprobs[i].items():
            assert value == pytest.approx(expected_top[text], abs=1e-5)
        assert lp.text_offset[i] == offset
        offset += len(lp.tokens[i])
    assert "".join(lp.tokens) == res.choices[0].text
    # streamed logprobs carry the same values and continuing offsets
    stream = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0.0, logprobs=3,
                                       stream=True)
    streamed = [c.choices[0].logprobs for c in stream]
    assert [t for s in streamed for t in s.token_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset


def test_echo(client, offline, tokenizer):
    prompt = PROMPTS[3]
    ref = reference(offline, prompt, temperature=0.0, max_tokens=4)
    res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0.0, echo=True)
    assert res.choices[0].text == prompt + ref.outputs[0].text
    ids = tokenizer(prompt).input_ids
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0.0, echo=True)
    assert by_ids.choices[0].text == tokenizer.decode(ids, skip_special_tokens=True) + ref.outputs[0].text
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0.0, echo=True,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == prompt + ref.outputs[0].text


def test_echo_with_logprobs_has_prompt_logprobs(client, offline):
    prompt = PROMPTS[0]
    ref = reference(offline, prompt, temperature=0.0, max_tokens=3, logprobs=1, prompt_logprobs=1)
    res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0.0, echo=True, logprobs=1)
    lp = res.choices[0].logprobs
    n_prompt = len(ref.prompt_token_ids)
    assert len(lp.tokens) == n_prompt + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    for i in range(1, n_prompt):
        token = ref.prompt_token_ids[i]
        assert lp.token_logprobs[i] == pytest.approx(ref.prompt_logprobs[i][token].logprob, abs=1e-5)
    generated = ref.outputs[0]
    for j, (token, entry) in enumerate(zip(generated.token_ids, generated.logprobs)):
        assert lp.token_logprobs[n_prompt + j] == pytest.approx(entry[token].logprob, abs=1e-5)


def test_stop_strings_cut_the_text_and_never_stream_part_of_it(client, offline):
    prompt = PROMPTS[1]
    full = reference(offline, prompt, temperature=0.0, max_tokens=24, ignore_eos=True).outputs[0].text
    stop = full[8:11]  # three characters from the middle of the greedy output
    assert len(stop) == 3 and stop.strip()
    cut = full[:full.index(stop)]
    for include in (False, True):
        expected = cut + stop if include else cut
        res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0.0, stop=[stop],
                                        extra_body={"ignore_eos": True, "include_stop_str_in_output": include})
        choice = res.choices[0]
        assert (choice.text, choice.finish_reason, choice.stop_reason) == (expected, "stop", stop)
        pieces = [c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=24, temperature=0.0, stop=stop, stream=True,
            extra_body={"ignore_eos": True, "include_stop_str_in_output": include})]
        assert "".join(pieces) == expected  # nothing streamed is taken back


def test_stop_token_ids_and_vllm_sampling_fields(client, offline):
    prompt = PROMPTS[0]
    ref = reference(offline, prompt, temperature=0.0, max_tokens=12, ignore_eos=True)
    stop_token = ref.outputs[0].token_ids[4]
    res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0.0,
                                    extra_body={"stop_token_ids": [stop_token], "ignore_eos": True,
                                                "return_token_ids": True})
    choice = res.choices[0]
    first = ref.outputs[0].token_ids.index(stop_token)
    assert choice.token_ids == ref.outputs[0].token_ids[:first + 1]
    assert (choice.finish_reason, choice.stop_reason) == ("stop", stop_token)
    fields = dict(top_k=5, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5,
                  min_tokens=4, seed=11, temperature=0.7, max_tokens=8)
    ref = reference(offline, prompt, **fields)
    extra = {k: fields[k] for k in ("top_k", "min_p", "repetition_penalty", "min_tokens")}
    res = client.completions.create(model=MODEL, prompt=prompt, extra_body=extra,
                                    **{k: v for k, v in fields.items() if k not in extra})
    assert res.choices[0].text == ref.outputs[0].text


def test_max_tokens_is_bounded_by_the_context(client, tokenizer):
    prompt = PROMPTS[0]
    room = 128 - len(tokenizer(prompt).input_ids)
    res = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1000, temperature=0.0,
                                    extra_body={"ignore_eos": True})
    assert res.usage.completion_tokens == room and res.choices[0].finish_reason == "length"
