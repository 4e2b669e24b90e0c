"""Many streaming clients at once; clients that leave free their KV blocks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import API_KEY, MODEL, async_client, engine_stats, slowed_engine, wait_until_idle

NUM_CLIENTS = 36
TEXTS = ["The quick brown fox", "import os", "Simple is better than complex.", "Return a new dictionary",
         "Decimal fixed point and floating point arithmetic", "x = 1", "The module provides", "a"]


def _requests():
    """(kind, prompt, max_tokens) per client: completions and chats, mixed lengths."""
    out = []
    for i in range(NUM_CLIENTS):
        text = f"{TEXTS[i % len(TEXTS)]} {i}"
        out.append(("chat" if i % 3 == 2 else "completion", text, 6 + i % 11))
    return out


async def _stream_one(client, kind: str, text: str, max_tokens: int) -> tuple[str, str | None]:
    if kind == "chat":
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                                      max_tokens=max_tokens, temperature=0.0, stream=True)
        pieces, finish = [], None
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(pieces), finish
    stream = await client.completions.create(model=MODEL, prompt=text, max_tokens=max_tokens, temperature=0.0,
                                             stream=True)
    pieces, finish = [], None
    async for chunk in stream:
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    return "".join(pieces), finish


def test_many_streaming_clients_equal_offline_greedy_and_leak_nothing(server, http, offline, tokenizer):
    requests = _requests()
    prompts = []
    for kind, text, _ in requests:
        if kind == "chat":
            enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
            prompts.append({"prompt_token_ids": list(enc["input_ids"] if hasattr(enc, "keys") else enc)})
        else:
            prompts.append(text)
    refs = offline.generate(prompts, [SamplingParams(temperature=0.0, max_tokens=m) for *_, m in requests],
                            use_tqdm=False)
    steps_before = engine_stats(http)["num_steps"]

    async def run_all():
        client = async_client(server)
        async with client:
            return await asyncio.wait_for(asyncio.gather(*(_stream_one(client, *r) for r in requests)), 300)

    results = asyncio.run(run_all())
    assert [text for text, _ in results] == [r.outputs[0].text for r in refs]
    assert [finish for _, finish in results] == [r.outputs[0].finish_reason for r in refs]
    stats = wait_until_idle(http)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
    # continuous batching: far fewer steps than if the clients had been served one by one
    tokens = sum(len(r.outputs[0].token_ids) for r in refs)
    assert stats["num_steps"] - steps_before < tokens / 2


def _abort_count(http) -> float:
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("pagedjax:request_success_total") and 'finished_reason="abort"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_that_disconnects_mid_stream_frees_its_blocks(server, http, client):
    wait_until_idle(http)
    aborts = _abort_count(http)
    body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 110, "temperature": 0.0,
            "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as own, slowed_engine(server, 0.02):
        with own.stream("POST", "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as res:
            assert res.status_code == 200
            lines = res.iter_lines()
            received = [line for line, _ in zip((line for line in lines if line.startswith("data:")), range(2))]
            assert len(received) == 2
            busy = engine_stats(http)
            assert busy["num_server_requests"] == 1 and busy["num_free_kv_blocks"] < busy["num_kv_blocks"]
        # leaving the block closes the connection mid-stream
    stats = wait_until_idle(http, timeout_s=20)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
    assert _abort_count(http) == aborts + 1  # aborted, not finished
    assert client.completions.create(model=MODEL, prompt="x = 1", max_tokens=3).usage.completion_tokens >= 1


def test_client_that_gives_up_on_a_non_streaming_request_frees_its_blocks(server, http):
    wait_until_idle(http)
    aborts = _abort_count(http)
    body = {"model": MODEL, "prompt": "import os", "max_tokens": 120, "temperature": 0.0, "ignore_eos": True,
            "n": 4}
    timeout = httpx.Timeout(10, read=0.5)
    with httpx.Client(base_url=server.url, trust_env=False, timeout=timeout) as impatient, slowed_engine(server, 0.02):
        with pytest.raises(httpx.ReadTimeout):  # 120 steps of >= 20 ms: far from done after 0.5 s
            impatient.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        deadline = time.monotonic() + 20
        while _abort_count(http) < aborts + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _abort_count(http) == aborts + 1
    stats = wait_until_idle(http)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
