"""A bounded schemathesis run against the live server: requests generated from the server's own
OpenAPI schema, valid ones (positive mode) and ones that break it (negative mode), must never
get a 5xx; the server stays healthy and leaks no KV block."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.server.helpers import AUTH, wait_until_idle

EXAMPLES_PER_OPERATION = 20


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx(server, http, mode):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    failures, calls, covered = [], 0, set()
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy(generation_mode=mode))
        def call(case):
            nonlocal calls
            response = case.call(base_url=server.url, headers=AUTH, timeout=60)
            calls += 1
            if response.status_code >= 500:
                failures.append((operation.label, case.body, response.status_code, response.text[:300]))

        try:
            call()
        except Unsatisfiable:  # nothing to break (e.g. GET /health has no parameters): nothing to send
            assert mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET"
            continue
        covered.add(operation.label)
    assert not failures, failures[:5]
    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /v1/embeddings", "POST /tokenize",
            "POST /detokenize"} <= covered
    assert calls >= 2 * EXAMPLES_PER_OPERATION
    stats = wait_until_idle(http, timeout_s=120)
    assert stats["num_free_kv_blocks"] == stats["num_kv_blocks"]
    assert http.get("/health").status_code == 200
