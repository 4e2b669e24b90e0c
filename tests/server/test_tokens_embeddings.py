"""`/tokenize`, `/detokenize` (vLLM's shapes) and `/v1/embeddings` (OpenAI's) against the real server.

Embeddings must equal Hugging Face's: the float32 model's `hidden_states[-1]` (after the final
norm) at each prompt's last token, L2-normalised.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import MODEL, REQUEST_TIMEOUT_S, async_client, wait_until_idle

TEXTS = ["hello world", "Simple is better than complex.", "x", "Return a new dictionary initialized from an "
         "optional positional argument and a possibly empty set of keyword arguments, as the docs say."]


def test_tokenize_and_detokenize_round_trip(http, tokenizer, server):
    for text in TEXTS:
        res = http.post("/tokenize", json={"model": MODEL, "prompt": text, "return_token_strs": True})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["tokens"] == tokenizer(text).input_ids and body["count"] == len(body["tokens"])
        assert body["max_model_len"] == 128
        assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
        plain = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
        assert plain["tokens"] == tokenizer(text, add_special_tokens=False).input_ids and plain["token_strs"] is None
        back = http.post("/detokenize", json={"model": MODEL, "tokens": plain["tokens"]})
        assert back.status_code == 200 and back.json() == {"prompt": text}
        assert http.post("/detokenize", json={"tokens": body["tokens"]}).json()["prompt"] == tokenizer.decode(
            body["tokens"])


def test_tokenize_messages_equals_the_chat_template(http, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    body = http.post("/tokenize", json={"model": MODEL, "messages": messages}).json()
    assert body["tokens"] == expected and body["count"] == len(expected)
    no_prompt = http.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert expected[:len(no_prompt["tokens"])] == no_prompt["tokens"] and no_prompt["count"] < len(expected)


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {"model": MODEL}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/tokenize", {"prompt": "a", "model": "other"}, "model"),
    ("/tokenize", {"messages": [{"role": "user", "content": "b"}], "chat_template_kwargs": {"tokenize": True}},
     "chat_template_kwargs"),
    ("/detokenize", {"tokens": [1, 10 ** 6]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/v1/embeddings", {"input": ""}, "input"),
    ("/v1/embeddings", {"input": []}, "input"),
    ("/v1/embeddings", {"input": [[1, 2], []]}, "input"),
    ("/v1/embeddings", {"input": [1, 10 ** 6]}, "input"),
    ("/v1/embeddings", {"input": "word " * 300}, "input"),
    ("/v1/embeddings", {"input": ["a"] * 300}, "input"),
    ("/v1/embeddings", {"input": "a", "dimensions": 8}, "dimensions"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_token_requests_are_400s(http, path, body, param):
    res = http.post(path, json=body)
    expected = 404 if param == "model" else 400
    assert res.status_code == expected, res.text
    assert res.json()["error"]["param"] == param


def test_token_routes_need_the_key(anon):
    for path, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]}),
                       ("/v1/embeddings", {"input": "a"})):
        assert anon.post(path, json=body).status_code == 401


@pytest.fixture(scope="module")
def hf_embeddings(llama_dir, tokenizer):
    """Hugging Face's normalised last hidden state at the last token, per prompt (token ids -> vector)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()

    def embed(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
        last = out.hidden_states[-1][0, -1].numpy().astype(np.float64)
        return last / np.linalg.norm(last)

    return embed


def test_embeddings_equal_hf(client, tokenizer, hf_embeddings):
    res = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert res.object == "list" and res.model == MODEL and [d.index for d in res.data] == list(range(len(TEXTS)))
    ids = [tokenizer(t).input_ids for t in TEXTS]
    for d, prompt in zip(res.data, ids):
        vector = np.asarray(d.embedding)
        assert vector.shape == (64,) and abs(np.linalg.norm(vector) - 1) < 1e-5
        np.testing.assert_allclose(vector, hf_embeddings(prompt), atol=1e-4)
    assert res.usage.prompt_tokens == res.usage.total_tokens == sum(len(p) for p in ids)
    # the client's default (base64, decoded by the client), token ids, and a single string
    default = client.embeddings.create(model=MODEL, input=TEXTS[0])
    np.testing.assert_allclose(default.data[0].embedding, res.data[0].embedding, atol=1e-6)
    by_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float", dimensions=64)
    for a, b in zip(by_ids.data, res.data):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    single = client.embeddings.create(model=MODEL, input=ids[1], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, res.data[1].embedding, atol=1e-6)


def test_base64_is_little_endian_float32(http):
    floats = http.post("/v1/embeddings", json={"input": "hello", "encoding_format": "float"}).json()
    packed = http.post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(floats["data"][0]["embedding"], np.float32))


def test_many_lengths_in_few_shapes(client, server, tokenizer, hf_embeddings):
    """Prompts of 1..128 tokens in one request: padded into power-of-two buckets and batches; each
    equals HF's; the embedder compiled a bounded number of shapes."""
    lengths = [1, 2, 15, 16, 17, 31, 33, 64, 65, 100, 127, 128]
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(3, 500, n)] for n in lengths]
    res = client.embeddings.create(model=MODEL, input=prompts, encoding_format="float")
    for d, prompt in zip(res.data, prompts):
        np.testing.assert_allclose(np.asarray(d.embedding), hf_embeddings(prompt), atol=1e-4)
    embedder = server.app.state.server._embedder
    assert [embedder.bucket(n) for n in (1, 16, 17, 100, 128)] == [16, 16, 32, 128, 128]


def test_embeddings_beside_generation_keep_the_tokens_and_the_kv_pool(server, offline, http):
    prompts = ["The quick brown fox", "import os"]
    refs = offline.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True), use_tqdm=False)

    async def run():
        client = async_client(server)
        async with client:
            streams = [client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0.0,
                                                 extra_body={"ignore_eos": True}) for p in prompts]
            embeds = [client.embeddings.create(model=MODEL, input=TEXTS) for _ in range(4)]
            return await asyncio.wait_for(asyncio.gather(*streams, *embeds), REQUEST_TIMEOUT_S)

    results = asyncio.run(run())
    assert [r.choices[0].text for r in results[:2]] == [r.outputs[0].text for r in refs]
    first = np.asarray(results[2].data[0].embedding)
    for r in results[3:]:
        np.testing.assert_allclose(np.asarray(r.data[0].embedding), first, atol=1e-6)
    stats = wait_until_idle(http)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_embeddings_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="a")
