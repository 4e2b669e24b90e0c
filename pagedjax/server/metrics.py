"""Prometheus metrics of the server, named like vLLM's (`vllm:...`) under a `pagedjax:` prefix.

Everything lives in one `CollectorRegistry` per server (no global registry): histograms and
counters are fed by the engine thread (prometheus_client is thread-safe), and gauges of the
engine's state are read at scrape time from the latest stats snapshot the engine thread
published, so scraping never touches the engine.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Buckets in seconds (vLLM's, roughly), wide enough for CPU runs.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
PREFIX = "pagedjax:"


class _EngineStateCollector:
    """Gauges and counters read from the engine's latest stats snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], dict], model_name: str):
        self._snapshot, self._model_name = snapshot, model_name

    def collect(self):
        stats, labels = self._snapshot(), [self._model_name]

        def gauge(name, doc, value):
            family = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name"])
            family.add_metric(labels, float(value))
            return family

        def counter(name, doc, value):
            family = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            family.add_metric(labels, float(value))
            return family

        queries = stats.get("prefix_cache_queries", 0)
        hits = stats.get("prefix_cache_hits", 0)
        yield gauge("num_requests_running", "Sequences in the running batch.", stats.get("num_running", 0))
        yield gauge("num_requests_waiting", "Sequences waiting to be scheduled.", stats.get("num_waiting", 0))
        yield gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).",
                    stats.get("kv_cache_usage", 0.0))
        yield gauge("num_kv_blocks", "KV-cache blocks in the pool.", stats.get("num_kv_blocks", 0))
        yield gauge("num_free_kv_blocks", "KV-cache blocks free (including cached, evictable ones).",
                    stats.get("num_free_kv_blocks", 0))
        yield gauge("prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / tokens looked up.",
                    hits / queries if queries else 0.0)
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", hits)
        yield counter("num_preemptions", "Sequences preempted (recomputed later) for lack of KV blocks.",
                      stats.get("num_preemptions", 0))


class ServerMetrics:
    """The server's Prometheus registry, and the calls the engine thread records through."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels, registry = ["model_name"], self.registry
        self._prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens prefilled.", labels,
                                      registry=registry).labels(model_name)
        self._generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", labels,
                                          registry=registry).labels(model_name)
        self._finished = Counter(PREFIX + "request_success", "Requests finished, by finish reason.",
                                 labels + ["finished_reason"], registry=registry)
        self._ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token (arrival to first "
                               "token out of the engine).", labels, buckets=TTFT_BUCKETS,
                               registry=registry).labels(model_name)
        self._itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between successive outputs of a "
                              "request.", labels, buckets=ITL_BUCKETS, registry=registry).labels(model_name)
        self._e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Arrival to last token.", labels,
                              buckets=E2E_BUCKETS, registry=registry).labels(model_name)

    def attach_engine_state(self, snapshot: Callable[[], dict]) -> None:
        """Registers the gauges read from `snapshot()` (the engine's latest stats) at scrape time."""
        self.registry.register(_EngineStateCollector(snapshot, self.model_name))

    # Called from the engine thread.
    def first_token(self, ttft_seconds: float, prompt_tokens: int) -> None:
        self._ttft.observe(ttft_seconds)
        self._prompt_tokens.inc(prompt_tokens)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def generated(self, num_tokens: int) -> None:
        self._generation_tokens.inc(num_tokens)

    def request_finished(self, reason: str, e2e_seconds: float | None = None) -> None:
        self._finished.labels(self.model_name, reason).inc()
        if e2e_seconds is not None:
            self._e2e.observe(e2e_seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
