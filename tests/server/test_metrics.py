"""`GET /metrics`: Prometheus text with vLLM's metric names under the `pagedjax:` prefix."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.server.helpers import MODEL, wait_until_idle

LONG_PROMPT = ("Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex. "
               "Complex is better than complicated. Flat is better than nested.")


def scrape(http) -> dict[str, float]:
    """sample name{labels} -> value, for every sample of the exposition."""
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model_name")
            values[f"{sample.name}{{{labels}}}"] = sample.value
            assert sample.labels.get("model_name") == MODEL
    return values


def test_metrics_count_tokens_latencies_and_prefix_hits(client, http):
    wait_until_idle(http)
    before = scrape(http)
    for _ in range(2):  # the second run finds the prompt's full blocks in the prefix cache
        res = client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=5, temperature=0.0,
                                        extra_body={"ignore_eos": True})
        assert res.usage.completion_tokens == 5
    prompt_tokens = res.usage.prompt_tokens
    wait_until_idle(http)
    after = scrape(http)

    def delta(name):
        return after[name] - before.get(name, 0.0)

    assert delta("pagedjax:prompt_tokens_total{}") == 2 * prompt_tokens
    assert delta("pagedjax:generation_tokens_total{}") == 10
    assert delta("pagedjax:request_success_total{finished_reason=length}") == 2
    assert delta("pagedjax:time_to_first_token_seconds_count{}") == 2
    assert delta("pagedjax:inter_token_latency_seconds_count{}") == 8  # 4 gaps per request
    assert delta("pagedjax:e2e_request_latency_seconds_count{}") == 2
    assert delta("pagedjax:time_to_first_token_seconds_sum{}") > 0
    assert delta("pagedjax:prefix_cache_hits_total{}") >= 16 * (prompt_tokens // 16)  # one block size = 16
    assert delta("pagedjax:prefix_cache_queries_total{}") >= 2 * prompt_tokens - 1
    assert 0.0 < after["pagedjax:prefix_cache_hit_rate{}"] <= 1.0
    # idle: nothing running or waiting, no KV block in use
    assert after["pagedjax:num_requests_running{}"] == 0 and after["pagedjax:num_requests_waiting{}"] == 0
    assert after["pagedjax:kv_cache_usage_perc{}"] == 0.0
    assert after["pagedjax:num_free_kv_blocks{}"] == after["pagedjax:num_kv_blocks{}"] == 64
    assert "pagedjax:num_preemptions_total{}" in after
