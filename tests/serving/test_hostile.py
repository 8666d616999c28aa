"""Hostile input against a real `careloop serve`: every route of its OpenAPI spec fuzzed by
schemathesis (with and without the control token) never answers 5xx, and payloads no schema
describes (deeply nested, not UTF-8, oversized) get a 4xx with a reason while the server keeps
answering."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

EXAMPLES = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _fuzz_every_operation(server, headers: dict[str, str]) -> None:
    """Each operation of the spec with generated requests; the first 5xx fails with its request.
    (Driven through hypothesis directly: schemathesis's pytest plugin does not run on pytest 9.)"""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9, [operation.label for operation in operations]
    for operation in operations:
        @EXAMPLES
        @given(case=operation.as_strategy())
        def no_server_error(case) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=60)

        no_server_error()


def test_no_route_answers_5xx_to_anyone(server):
    _fuzz_every_operation(server, {})


def test_no_route_answers_5xx_to_the_token_holder(server):
    """With the token, the fuzzer reaches the adapter loader itself: arbitrary names and paths."""
    _fuzz_every_operation(server, server.control_headers)


def _post(server, route: str, content, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", content=content, timeout=60,
                      headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/generate", "/v1/load_lora_adapter"])
def test_payloads_no_schema_describes_get_a_4xx_with_a_reason(server, route):
    auth = server.control_headers if "lora" in route else {}
    nested = b"[" * 100_000 + b"]" * 100_000
    not_utf8 = b'{"inputs": "\xff\xfe caf\xe9"}'
    oversized = b'{"inputs": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    for name, body, status in (("deeply nested", nested, 400), ("not UTF-8", not_utf8, 400),
                               ("oversized", oversized, 413)):
        response = _post(server, route, body, **auth)
        assert response.status_code == status, (name, response.status_code, response.text[:300])
        assert "error" in response.json() and response.text.count("Traceback") == 0, name
    chunked = _post(server, route, iter([b'{"inputs": "', b"a" * (9 * 1024 * 1024), b'"}']), **auth)
    assert chunked.status_code == 413, "a body that does not declare its length is counted too"
    base_model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    ok = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": base_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200, "the server keeps answering"


def test_megabyte_prompts_are_refused_untokenized_and_stall_nothing(server):
    """Issue 18, 12: a 7.5 MB prompt (under the body limit) was tokenized on the event loop and
    stalled `/health` for seconds. Now a prompt longer than the context could hold is refused (400,
    with the reason) before tokenizing, and tokenizing runs off the loop."""
    base_model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    prompt = "word " * (1_500_000)  # 7.5 MB: words the tokenizer must split one by one
    bodies = {"/v1/chat/completions": {"model": base_model, "messages": [{"role": "user", "content": prompt}]},
              "/generate": {"inputs": prompt}}
    answers: list[httpx.Response] = []

    def flood() -> None:
        for route, body in bodies.items():
            answers.append(httpx.post(f"{server.url}{route}", json=body, timeout=120))

    floods = [threading.Thread(target=flood) for _ in range(3)]
    for thread in floods:
        thread.start()
    latencies = []
    while any(thread.is_alive() for thread in floods):
        started = time.perf_counter()
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        latencies.append(time.perf_counter() - started)
    for thread in floods:
        thread.join()
    assert len(answers) == 6
    for answer in answers:
        assert answer.status_code == 400, answer.text[:300]
        assert "7,500,000 characters" in answer.text and "context is 512 tokens" in answer.text, answer.text[:300]
    assert max(latencies) < 1.0, f"/health took up to {max(latencies):.2f} s while the prompts were refused"
