"""Serving under pressure: a bounded queue, cancellation on disconnect, adapter swaps under load."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

QUESTION = [{"role": "user", "content": "What is hypertension?"}]


def _body(model: str, max_tokens: int, **extra) -> dict:
    return {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "temperature": 1.0,
            "seed": 1, **extra}


@pytest.fixture(scope="module")
def small_server(server_factory):
    """One request at a time and one waiting: easy to fill."""
    return server_factory(max_batch="1", max_queue="1")


def test_full_queue_answers_429_with_retry_after(small_server):
    url = f"{small_server.url}/v1/chat/completions"
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(
            lambda _: httpx.post(url, json=_body("careloop-demo-tiny", 200, ignore_eos=True), timeout=120),
            range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses, statuses
    assert set(statuses) <= {200, 429}
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]["message"]


def test_client_disconnect_cancels_generation(small_server):
    url = f"{small_server.url}/v1/chat/completions"
    started = time.perf_counter()
    httpx.post(url, json=_body("careloop-demo-tiny", 400, ignore_eos=True), timeout=120).raise_for_status()
    full_seconds = time.perf_counter() - started
    with httpx.stream("POST", url, json=_body("careloop-demo-tiny", 400, stream=True, ignore_eos=True),
                      timeout=120) as r:
        next(r.iter_lines())  # the first chunk arrived: generation is running; now hang up
    started = time.perf_counter()
    # With one batch slot, this request waits for the abandoned one unless it was cancelled.
    httpx.post(url, json=_body("careloop-demo-tiny", 1), timeout=120).raise_for_status()
    assert time.perf_counter() - started < full_seconds / 2


def test_adapter_swaps_under_20_streaming_clients_fail_nothing(server):
    assert server.load("swap-v0001", server.adapter_dir / "med-v0001").status_code == 200
    url = f"{server.url}/v1/chat/completions"

    def stream(index: int) -> tuple[int, str, str | None]:
        model = "swap-v0001" if index % 2 else "careloop-demo-tiny"
        with httpx.stream("POST", url, json=_body(model, 60, stream=True, seed=index), timeout=120) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        finish = None
        for line in lines[:-1]:
            choices = json.loads(line[5:])["choices"]
            finish = (choices[0]["finish_reason"] if choices else None) or finish
        return r.status_code, lines[-1], finish

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(stream, i) for i in range(20)]
        time.sleep(0.3)  # streams are running; swap adapters under them
        assert server.load("swap-v0002", server.adapter_dir / "med-v0002").status_code == 200
        unloading = pool.submit(server.unload, "swap-v0001")  # waits for its users to finish
        results = [f.result() for f in futures]
        assert unloading.result().status_code == 200
    assert all(status == 200 and last == "data: [DONE]" and finish in ("stop", "length")
               for status, last, finish in results), results
    names = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    assert "swap-v0002" in names and "swap-v0001" not in names
    server.unload("swap-v0002")
