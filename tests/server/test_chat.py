"""`/v1/chat/completions`: the chat template, then outputs equal to the offline engine's."""

from __future__ import annotations

import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import MODEL

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime number."}]


def template_ids(tokenizer, messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def reference(offline, ids, **params):
    (out,) = offline.generate({"prompt_token_ids": ids}, SamplingParams(**params), use_tqdm=False)
    return out


def test_chat_greedy_equals_offline(client, offline, tokenizer):
    ids = template_ids(tokenizer, MESSAGES)
    assert tokenizer.decode(ids).endswith("<|assistant|>\n")  # the generation prompt is there
    ref = reference(offline, ids, temperature=0.0, max_tokens=10)
    res = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0.0,
                                         extra_body={"return_token_ids": True})
    (choice,) = res.choices
    assert choice.message.role == "assistant" and choice.message.content == ref.outputs[0].text
    assert choice.token_ids == ref.outputs[0].token_ids and choice.finish_reason == ref.outputs[0].finish_reason
    assert res.object == "chat.completion" and res.id.startswith("chatcmpl-")
    assert res.usage.prompt_tokens == len(ids) and res.usage.completion_tokens == len(ref.outputs[0].token_ids)
    # streamed: the role first, then content deltas, the finish reason on the last, usage at the end
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0.0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0] for c in chunks[1:-1]]
    assert "".join(d.delta.content for d in deltas) == ref.outputs[0].text
    assert all(d.delta.role is None for d in deltas)
    assert deltas[-1].finish_reason == ref.outputs[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == res.usage.total_tokens


def test_max_completion_tokens_and_text_parts(client, offline, tokenizer):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a"}, {"type": "text", "text": "prime."}]}]
    ids = template_ids(tokenizer, [{"role": "user", "content": "Name a\nprime."}])
    ref = reference(offline, ids, temperature=0.0, max_tokens=3, ignore_eos=True)
    res = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=9, max_completion_tokens=3,
                                         temperature=0.0, extra_body={"ignore_eos": True})
    assert res.choices[0].message.content == ref.outputs[0].text
    assert res.usage.completion_tokens == 3 and res.usage.prompt_tokens == len(ids)


def test_chat_logprobs_equal_engine_values(client, offline, tokenizer):
    ids = template_ids(tokenizer, MESSAGES)
    ref = reference(offline, ids, temperature=0.0, max_tokens=6, logprobs=2).outputs[0]
    res = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0.0,
                                         logprobs=True, top_logprobs=2)
    content = res.choices[0].logprobs.content
    assert len(content) == len(ref.token_ids)
    for item, token_id, entry in zip(content, ref.token_ids, ref.logprobs):
        assert item.token == entry[token_id].decoded_token
        assert item.bytes == list(item.token.encode("utf-8"))
        assert item.logprob == pytest.approx(entry[token_id].logprob, abs=1e-5)
        top = sorted((e for e in entry.values() if e.rank <= 2), key=lambda e: e.rank)
        assert [t.token for t in item.top_logprobs] == [e.decoded_token for e in top]
        assert [t.logprob for t in item.top_logprobs] == pytest.approx([e.logprob for e in top], abs=1e-5)
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0.0,
                                           logprobs=True)
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content)
    streamed = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0.0,
                                              logprobs=True, top_logprobs=2, stream=True)
    values = [t.logprob for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert values == pytest.approx([c.logprob for c in content], abs=1e-6)


def test_chat_n_streaming_with_seed(client, offline, tokenizer):
    ids = template_ids(tokenizer, MESSAGES)
    params = dict(temperature=1.0, seed=99, max_tokens=7)
    ref = reference(offline, ids, n=2, **params)
    texts = {0: "", 1: ""}
    roles = set()
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, stream=True, **params):
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.delta.role:
            roles.add(choice.index)
    assert roles == {0, 1}
    assert [texts[0], texts[1]] == [o.text for o in ref.outputs]
    res = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, **params)
    assert [c.message.content for c in res.choices] == [o.text for o in ref.outputs]
