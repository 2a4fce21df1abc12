"""Property-based fuzzing of every route from the app's own OpenAPI schema (schemathesis):
valid and invalid bodies alike must never get a 5xx, and every error has the OpenAI body.

Generation is capped so the model stays cheap: at most 2 new tokens per request.  (Driven with
hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.)
"""

from __future__ import annotations

import pytest
from server_helpers import API_KEY

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _cheap(body):
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 2:
                body[key] = 2
        if "messages" in body and "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 2
    return body


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_input_gets_a_server_error(live, mode):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json", headers=AUTH)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                              "/v1/retrieve", "/v1/models"}
    fuzzed = set()
    for op in operations:
        @given(case=op.as_strategy(schemathesis.GenerationMode(mode)))
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if isinstance(case.body, dict):
                case.body = _cheap(case.body)
            r = case.call(base_url=live.url, headers=AUTH, timeout=120)
            assert r.status_code < 500, (case.method, case.path, case.body, r.text[:300])
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        try:
            check()
        except Unsatisfiable:  # negative mode: nothing about this operation can be made invalid
            assert mode == "negative" and op.method.upper() == "GET", op.path
            continue
        fuzzed.add(op.path)
    assert fuzzed >= {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/retrieve"}
