"""serving.client against a real server: sync and async chat, and what each failure becomes."""

from __future__ import annotations

import asyncio

import pytest

from serving.client import ServingClient, ServingRejected, ServingUnavailable

QUESTION = [{"role": "user", "content": "What is hypertension?"}]


def test_sync_and_async_streams_match_the_whole_answer(server):
    client = ServingClient(server.url, token=server.token)
    whole = client.chat(QUESTION, max_tokens=12, temperature=1.0, seed=3)
    assert whole.model == client.base_model() == "careloop-demo-tiny" and whole.completion_tokens > 0
    streamed = list(client.stream_chat(QUESTION, max_tokens=12, temperature=1.0, seed=3))
    assert "".join(d.text for d in streamed) == whole.text
    assert streamed[-1].finish_reason == whole.finish_reason

    async def collect() -> list:
        return [d async for d in client.astream_chat(QUESTION, max_tokens=12, temperature=1.0, seed=3)]

    assert "".join(d.text for d in asyncio.run(collect())) == whole.text
    assert client.is_demo() is True and client.health() is True


def test_what_the_server_refuses_comes_back_as_a_readable_reason(server):
    client = ServingClient(server.url, token=server.token)
    with pytest.raises(ServingRejected, match="context") as too_long:
        client.chat([{"role": "user", "content": "blood pressure " * 400}], max_tokens=8)
    assert too_long.value.status == 400
    with pytest.raises(ServingRejected, match="does not exist") as unknown:
        list(client.stream_chat(QUESTION, model="med-v9999", max_tokens=4))
    assert unknown.value.status == 404
    with pytest.raises(ServingRejected) as unauthorized:
        ServingClient(server.url, token="wrong").unload_adapter("anything")
    assert unauthorized.value.status == 401


def test_an_unreachable_server_is_reported_as_unavailable():
    client = ServingClient("http://127.0.0.1:9", token="any")
    assert client.health() is False
    for call in (lambda: client.chat(QUESTION, model="m"), lambda: list(client.stream_chat(QUESTION, model="m")),
                 client.models, lambda: client.load_adapter("v", "/x")):
        with pytest.raises(ServingUnavailable, match="unreachable"):
            call()
