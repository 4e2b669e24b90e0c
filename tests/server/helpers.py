"""Constants and helpers of the server tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import time

import httpx
import openai

API_KEY = "test-key"
MODEL = "tiny-llama"
ALIAS = "tiny-alias"
# Small shapes keep compiles few; enough KV blocks for 16 running sequences of ~40 tokens.
ENGINE_OPTIONS = dict(block_size=16, num_kv_blocks=64, max_model_len=128, max_num_seqs=16, max_num_batched_tokens=128)
REQUEST_TIMEOUT_S = 120.0
# The tool server's engine: longer contexts for tool lists and tool-call histories.
TOOL_SERVER_OPTIONS = dict(ENGINE_OPTIONS, max_model_len=256)
# A chat template that shows what reaches it: tool names, assistant tool calls (arguments as
# objects), tool results with their call ids.
TOOL_CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\ntools:{% for t in tools %} {{ t.function.name }}{% endfor %}</s>\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ {'name': c.function.name, "
    "'arguments': c.function.arguments} | tojson }}</tool_call>{% endfor %}"
    "{% elif m.role == 'tool' %}<tool_response {{ m.tool_call_id }}>{{ m.content }}</tool_response>"
    "{% else %}{{ m.content }}{% endif %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def async_client(server, **kwargs) -> openai.AsyncOpenAI:
    """An async OpenAI client (create it inside the event loop that uses it)."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S,
                              http_client=httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=100)),
                              **kwargs)


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def engine_stats(http: httpx.Client) -> dict:
    response = http.get("/debug/stats", headers=AUTH)
    response.raise_for_status()
    return response.json()


def wait_until_idle(http: httpx.Client, timeout_s: float = 30.0) -> dict:
    """Polls /debug/stats (bounded) until no request is in flight; returns the stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = engine_stats(http)
        if stats["num_server_requests"] == 0 and stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"the server is still busy after {timeout_s} s: {stats}")
        time.sleep(0.05)


@contextlib.contextmanager
def slowed_engine(server, seconds_per_step: float):
    """Makes every model step of the server's engine take at least `seconds_per_step`, so a test
    can act while a request is surely still running. NOTE: an instance attribute on the runner,
    read by the engine thread at each step; removed afterwards."""
    runner = server.app.state.server.engine._engine.runner
    original = runner.execute_model

    def slow(*args, **kwargs):
        time.sleep(seconds_per_step)
        return original(*args, **kwargs)

    runner.execute_model = slow
    try:
        yield
    finally:
        del runner.execute_model
