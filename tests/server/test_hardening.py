"""Hostile requests get a clear 4xx fast and never hurt anyone else; a failing step loses nothing.

Each reproduction of the hardening issue: a 4xx in well under a second where it applies, the
server healthy afterwards, and unrelated concurrent streams complete with their exact tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time

import httpx
import pytest

from pagedjax.sampling_params import SamplingParams
from tests.server.helpers import AUTH, MODEL, REQUEST_TIMEOUT_S, async_client, slowed_engine, wait_until_idle
from tests.server.test_errors import failing

# Well under a second idle; beside 4 starting streams on a loaded 2-core CI box 3.8 s was seen.
# The bug it guards: 18 s for n=10000, an out-of-memory kill for n=10**8.
FAST_S = 8.0
TEXTS = ["The quick brown fox", "import os", "Simple is better than complex.", "Return a new dictionary"]


def _post(http, body, **kwargs) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = http.post("/v1/completions", **({"json": body} if not kwargs else kwargs))
    return response, time.monotonic() - start


def _assert_400(response, elapsed, param=None):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert elapsed < FAST_S, f"took {elapsed:.2f} s"


@pytest.fixture(scope="module")
def references(offline):
    """Offline greedy outputs of the unrelated streams that run beside the hostile requests."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    return [out.outputs[0].text for out in offline.generate(TEXTS, params, use_tqdm=False)]


def _with_streams(server, hostile):
    """Runs `hostile()` (in a thread) while the unrelated streams run; returns their texts."""
    async def one(client, text):
        stream = await client.completions.create(model=MODEL, prompt=text, max_tokens=24, temperature=0.0,
                                                 stream=True, extra_body={"ignore_eos": True})
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def run():
        client = async_client(server)
        async with client:
            streams = [asyncio.create_task(one(client, t)) for t in TEXTS]
            await asyncio.sleep(0.05)
            result = await asyncio.to_thread(hostile)
            return result, await asyncio.wait_for(asyncio.gather(*streams), REQUEST_TIMEOUT_S)

    return asyncio.run(run())


@pytest.mark.parametrize("field,value", [("n", 100_000_000), ("best_of", 100_000_000), ("n", 10_000)])
def test_huge_n_or_best_of_is_a_fast_400(server, http, references, field, value):
    body = dict(model=MODEL, prompt="hi", max_tokens=1, **{field: value})
    (response, elapsed), texts = _with_streams(server, lambda: _post(http, body))
    _assert_400(response, elapsed, param=field)
    assert "max_num_seqs" in response.json()["error"]["message"]
    assert texts == references
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("extra,status", [
    (dict(top_k=2**40), 200),  # clamped to the vocabulary: plain top-k off
    (dict(stop_token_ids=[2**40], min_tokens=2), 400),
    (dict(stop_token_ids=[-1]), 400),
    (dict(seed=2**70), 200),
    (dict(logprobs=2**40), 400),
    (dict(min_tokens=2**40), 400),
    (dict(max_tokens=2**63), 200),  # bounded by the context
    (dict(temperature=1e308, top_p=0.5), 200),
])
def test_out_of_range_integers_never_fail_a_shared_step(server, http, references, extra, status):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, **extra}
    (response, elapsed), texts = _with_streams(server, lambda: _post(http, body))
    assert response.status_code == status, response.text
    if status == 400:
        _assert_400(response, elapsed)
    assert texts == references  # the unrelated streams were not hurt
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("raw,param", [
    ('{"model": "%s", "prompt": "\\ud800 hi", "max_tokens": 2}' % MODEL, "prompt"),
    ('{"model": "\\udfff", "prompt": "hi", "max_tokens": 2}', "model"),
    ('{"model": "%s", "prompt": ["ok", "\\udabc"], "max_tokens": 2}' % MODEL, "prompt"),
])
def test_lone_surrogates_are_a_400(http, raw, param):
    response, elapsed = _post(http, None, content=raw.encode(), headers={**AUTH, "Content-Type": "application/json"})
    _assert_400(response, elapsed, param=param)
    chat = ('{"model": "%s", "messages": [{"role": "user", "content": "a\\ud83d"}], "max_tokens": 2}' % MODEL)
    response = http.post("/v1/chat/completions", content=chat.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_a_surrogate_pair_is_fine(http):
    raw = '{"model": "%s", "prompt": "smile \\ud83d\\ude00", "max_tokens": 2}' % MODEL
    response = http.post("/v1/completions", content=raw.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("prompt", [[-1], [2**64], [3, 2**31], [[1, 2], [-5]]])
def test_token_ids_are_checked_before_anything_decodes_them(http, prompt):
    response, elapsed = _post(http, dict(model=MODEL, prompt=prompt, echo=True, logprobs=1, max_tokens=1))
    _assert_400(response, elapsed, param="prompt")
    assert "vocabulary" in response.json()["error"]["message"]


def test_limits_on_prompts_and_stop_strings(server, http):
    limits = server.app.state.server.limits
    cases = [(dict(prompt=["a"] * (limits.max_prompts_per_request + 1)), "prompt"),
             (dict(prompt="hi", stop=[f"s{i}" for i in range(limits.max_stop_strings + 1)]), "stop"),
             (dict(prompt="hi", stop="x" * (limits.max_stop_string_chars + 1)), "stop")]
    for extra, param in cases:
        response, elapsed = _post(http, dict(model=MODEL, max_tokens=1, **extra))
        _assert_400(response, elapsed, param=param)


def test_body_size_limit_is_a_413_before_parsing_and_auth_comes_first(server, http, anon):
    limit = server.app.state.server.limits.max_request_body_bytes
    big = b'{"model": "x", "prompt": "' + b"a" * (limit + 10) + b'"}'
    start = time.monotonic()
    response = anon.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and time.monotonic() - start < 5 * FAST_S  # refused before reading it
    response = http.post("/v1/completions", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted while read
        for _ in range(limit // (1 << 20) + 2):
            yield b"a" * (1 << 20)

    response = http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert http.get("/health").status_code == 200


def test_a_huge_prompt_is_tokenized_off_the_event_loop(server, http, anon):
    prompt = "Simple is better than complex. " * (4 * 1024 * 1024 // 31)  # ~4 MB of text
    result = {}

    def send():
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S, trust_env=False, headers=AUTH) as own:
            result["response"] = own.post("/v1/completions", json=dict(model=MODEL, prompt=prompt, max_tokens=1))

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    while sender.is_alive():
        start = time.monotonic()
        assert anon.get("/health").status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    sender.join()
    response = result["response"]
    assert response.status_code == 400 and "max_model_len" in response.json()["error"]["message"]
    assert len(latencies) >= 3 and max(latencies) < FAST_S, latencies


def test_health_is_503_while_the_engine_is_stuck(server, http, anon):
    state = server.app.state.server
    limits = state.limits
    state.limits = dataclasses.replace(limits, health_stall_seconds=0.3)
    try:
        with slowed_engine(server, 1.5):
            done = {}
            thread = threading.Thread(target=lambda: done.update(r=http.post("/v1/completions", json=dict(
                model=MODEL, prompt="hi", max_tokens=2))))
            thread.start()
            time.sleep(0.9)
            assert anon.get("/health").status_code == 503  # work, and no step finished for 0.9 s
            thread.join()
        assert done["r"].status_code == 200
        wait_until_idle(http)
        assert anon.get("/health").status_code == 200
    finally:
        state.limits = limits


def test_a_step_failing_once_loses_nothing_for_concurrent_streams(server, http, references):
    engine = server.app.state.server.engine._engine
    wait_until_idle(http)
    with failing(engine.runner, "execute_model", RuntimeError("injected once"), after_calls=4, times=1) as calls:
        _, texts = _with_streams(server, lambda: None)
    assert calls["failed"] == 1 and texts == references
    stats = wait_until_idle(http)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]


def test_memory_stays_flat_over_many_requests(server, http):
    """A thousand short requests (mixed kinds, some aborted by their client) after a warm-up:
    the process' resident memory does not grow with the number of requests served."""
    import resource

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def burst(n):
        client = async_client(server)
        async with client:
            sem = asyncio.Semaphore(32)

            async def one(i):
                async with sem:
                    if i % 3 == 0:
                        await client.chat.completions.create(model=MODEL, max_tokens=2,
                                                             messages=[{"role": "user", "content": f"hi {i}"}])
                    else:
                        await client.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=2,
                                                        logprobs=1 if i % 5 == 0 else None)

            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(burst(200))  # warm-up: shapes compiled, caches filled
    wait_until_idle(http)
    before = rss_mib()
    asyncio.run(burst(1000))
    stats = wait_until_idle(http)
    growth = rss_mib() - before
    print(f"RSS {before:.0f} MiB -> {before + growth:.0f} MiB over 1000 requests")
    assert growth < 60, growth
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
