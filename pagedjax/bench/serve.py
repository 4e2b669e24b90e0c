"""`pagedjax bench serve`: the online serving benchmark (vLLM's benchmark_serving methodology).

Requests from a `Workload` (fixed lengths, or synthetic ShareGPT-like ones; random prompt token
ids) are sent as streaming completions (`ignore_eos`, `max_tokens` = the output length,
greedy) to an OpenAI-compatible server, arriving as a Poisson process (gamma inter-arrival
times, shape `burstiness`, mean 1 / `request_rate`; `inf` sends all at once), at most
`max_concurrency` in flight. Per request: TTFT (send to first chunk), ITL (every gap between
chunks), TPOT = (latency - TTFT) / (output tokens - 1), end-to-end latency; output tokens come
from the final usage chunk. Figures: request and token throughput over the whole run, and
mean / median / p99 (and more) of each latency, in milliseconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time

import numpy as np

from pagedjax.bench.common import summary
from pagedjax.bench.datasets import Workload


@dataclasses.dataclass
class RequestResult:
    """What one request measured (seconds)."""

    prompt_len: int
    expected_output_len: int
    output_len: int = 0
    ttft: float | None = None
    itl: list[float] = dataclasses.field(default_factory=list)
    latency: float | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.error is None and self.ttft is not None

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_len < 2:
            return None
        return (self.latency - self.ttft) / (self.output_len - 1)


def arrival_intervals(num_requests: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps before each request: 0 for an infinite rate, else gamma(shape=burstiness,
    scale=1 / (rate * burstiness)), a Poisson process when burstiness is 1."""
    if request_rate <= 0 or burstiness <= 0:
        raise ValueError(f"request_rate and burstiness must be > 0, got {request_rate}, {burstiness}")
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = np.random.default_rng(seed)
    return [float(x) for x in rng.gamma(burstiness, 1.0 / (request_rate * burstiness), size=num_requests)]


async def _send(client, model: str, prompt: tuple[int, ...], output_len: int) -> RequestResult:
    result = RequestResult(len(prompt), output_len)
    payload = dict(model=model, prompt=list(prompt), max_tokens=output_len, temperature=0.0, ignore_eos=True,
                   stream=True, stream_options=dict(include_usage=True))
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=payload) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread()).decode(errors='replace')}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                now = time.perf_counter()
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message"))
                    return result
                if chunk.get("choices"):
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                elif chunk.get("usage"):
                    result.output_len = int(chunk["usage"]["completion_tokens"])
        result.latency = last - start
        if result.ttft is None:
            result.error = "the stream ended without a token"
    except Exception as error:  # a failed request is counted, not fatal
        result.error = f"{type(error).__name__}: {error}"
    return result


async def run_benchmark(base_url: str, model: str, workload: Workload, *, request_rate: float = math.inf,
                        burstiness: float = 1.0, max_concurrency: int | None = None, api_key: str | None = None,
                        seed: int = 0, timeout_s: float | None = None) -> tuple[dict, list[RequestResult]]:
    """Sends `workload` to the server at `base_url`; returns (figures, per-request results)."""
    import httpx

    intervals = arrival_intervals(len(workload), request_rate, burstiness, seed)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(timeout_s, connect=30.0)
    limits = httpx.Limits(max_connections=max_concurrency or len(workload), max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits,
                                 trust_env=False) as client:

        async def one(prompt, output_len):
            if limit is None:
                return await _send(client, model, prompt, output_len)
            async with limit:
                return await _send(client, model, prompt, output_len)

        start = time.perf_counter()
        tasks = []
        for gap, prompt, output_len in zip(intervals, workload.prompts, workload.output_lens):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(prompt, output_len)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return figures(results, duration), results


def figures(results: list[RequestResult], duration: float) -> dict:
    """Throughputs over the run and latency statistics (ms) over the successful requests."""
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_len for r in ok)

    def ms(values):
        return {k: (None if v is None else v * 1000.0) for k, v in summary(values).items()}

    return dict(
        completed=len(ok), failed=len(results) - len(ok), duration_s=duration,
        total_input_tokens=input_tokens, total_output_tokens=output_tokens,
        request_throughput=len(ok) / duration, output_throughput=output_tokens / duration,
        total_token_throughput=(input_tokens + output_tokens) / duration,
        ttft_ms=ms([r.ttft for r in ok]), tpot_ms=ms([r.tpot for r in ok if r.tpot is not None]),
        itl_ms=ms([gap for r in ok for gap in r.itl]), e2el_ms=ms([r.latency for r in ok]),
        output_len_mismatches=sum(r.output_len != r.expected_output_len for r in ok),
        errors=sorted({r.error for r in results if r.error})[:10])


def format_table(result: dict) -> str:
    """The figures as a plain-text table (vLLM's layout)."""
    f = result["figures"]
    w = result["workload"]
    rate = result["request_rate"]
    lines = ["=" * 18 + " Serving Benchmark Result " + "=" * 18]

    def row(name, value, fmt="{:.2f}"):
        lines.append(f"{name:<44}{fmt.format(value) if value is not None else 'n/a':>18}")

    row("Successful requests:", f["completed"], "{}")
    row("Failed requests:", f["failed"], "{}")
    row("Request rate (req/s):", rate if rate != "inf" else math.inf, "{}")
    row("Max concurrency:", result["max_concurrency"] or "none", "{}")
    row("Workload:", w["kind"], "{}")
    row("Benchmark duration (s):", f["duration_s"])
    row("Total input tokens:", f["total_input_tokens"], "{}")
    row("Total generated tokens:", f["total_output_tokens"], "{}")
    row("Request throughput (req/s):", f["request_throughput"])
    row("Output token throughput (tok/s):", f["output_throughput"])
    row("Total token throughput (tok/s):", f["total_token_throughput"])
    for key, title in (("ttft_ms", "Time to First Token"), ("tpot_ms", "Time per Output Token (excl. 1st token)"),
                       ("itl_ms", "Inter-token Latency"), ("e2el_ms", "End-to-end Latency")):
        lines.append(f"{' ' + title + ' ':-^62}")
        short = key.split("_")[0].upper()
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            row(f"{label} {short} (ms):", f[key][stat])
    server = result.get("server") or {}
    if "compiles_during_run" in server:
        row("Server compiles during the run:", server["compiles_during_run"], "{}")
    lines.append("=" * 62)
    return "\n".join(lines)
