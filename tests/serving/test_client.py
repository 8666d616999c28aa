"""serving.client against a real server: sync and async chat, and what each failure becomes."""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.client import ContextExceeded, ControlUnsupported, ServingClient, ServingRejected, ServingUnavailable

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


def test_an_answer_longer_than_the_context_leaves_is_cut_to_fit_not_refused(server):
    """Every answer asks for CARELOOP_ANSWER_MAX_TOKENS; where a long conversation (or a small model's
    context: the tiny model's is 512) leaves less, the answer gets the room there is, as serving's own
    default did, instead of the refusal vLLM and careloop give a request that cannot fit."""
    client = ServingClient(server.url, token=server.token)
    long_question = [{"role": "user", "content": "blood pressure " * 150}]
    whole = client.chat(long_question, max_tokens=500, temperature=0, extra_body={"ignore_eos": True})
    assert 0 < whole.completion_tokens == 512 - whole.prompt_tokens < 500
    streamed = list(client.stream_chat(long_question, max_tokens=500, temperature=0, extra_body={"ignore_eos": True}))
    assert "".join(d.text for d in streamed) == whole.text and streamed[-1].finish_reason == "length"
    with pytest.raises(ContextExceeded, match="context") as no_room:  # no room at all: a reason, not an answer
        client.chat([{"role": "user", "content": "blood pressure " * 400}], max_tokens=500)
    assert no_room.value.context_tokens == 512 < no_room.value.prompt_tokens
    # A caller that would rather shorten the conversation (the chat) hears the figures instead.
    with pytest.raises(ContextExceeded) as refused:
        list(client.stream_chat(long_question, max_tokens=500, shorten=False))
    assert (refused.value.context_tokens, refused.value.prompt_tokens) == (512, whole.prompt_tokens)
    assert pickle.loads(pickle.dumps(refused.value)).prompt_tokens == whole.prompt_tokens  # Celery task errors


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


def test_with_the_live_version_unloaded_the_base_model_answers_and_says_so(server):
    """Issue 31, 12: the live version unloaded over HTTP let the answer in flight finish, then every
    chat failed with "The model `med-...` does not exist" until someone loaded it again. A chat that
    names no model is answered by the base model instead, under the base model's name (what the bot
    shows as "answered by"), with one warning; a caller that names the version still hears it is gone."""
    from structlog.testing import capture_logs

    assert server.load("fallback-v0001", server.adapter_dir / "med-v0001").status_code == 200
    client = ServingClient(server.url, token=server.token, live_lookup=lambda: "fallback-v0001", cache_seconds=0)
    base = client.base_model()
    assert client.chat(QUESTION, max_tokens=4).model == "fallback-v0001"
    client.unload_adapter("fallback-v0001")

    async def collect() -> list:
        return [d async for d in client.astream_chat(QUESTION, max_tokens=8, temperature=0)]

    with capture_logs() as events:
        whole = client.chat(QUESTION, max_tokens=8, temperature=0)
        streamed = list(client.stream_chat(QUESTION, max_tokens=8, temperature=0))
        streamed_async = asyncio.run(collect())
    assert whole.model == base and whole.completion_tokens > 0
    assert whole.text == client.chat(QUESTION, model=base, max_tokens=8, temperature=0).text  # the base model's
    for deltas in (streamed, streamed_async):
        assert {d.model for d in deltas} == {base} and "".join(d.text for d in deltas) == whole.text
    warnings = [e for e in events if e["event"] == "live_version_not_loaded_base_model_answers"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning", events
    assert warnings[0]["adapter"] == "fallback-v0001" and warnings[0]["base_model"] == base
    with pytest.raises(ServingRejected, match="does not exist") as named:
        client.chat(QUESTION, model="fallback-v0001", max_tokens=4)
    assert named.value.status == 404

    assert server.load("fallback-v0001", server.adapter_dir / "med-v0001").status_code == 200
    with capture_logs() as events:
        assert client.chat(QUESTION, max_tokens=4).model == "fallback-v0001"
    assert [e["event"] for e in events if e["event"].startswith("live_version")] == ["live_version_answers_again"]
    assert server.unload("fallback-v0001").status_code == 200
    client.close()


def test_an_unreachable_server_is_reported_as_unavailable():
    client = ServingClient("http://127.0.0.1:9", token="any")
    assert client.health() is False
    for call in (lambda: client.chat(QUESTION, model="m"), lambda: list(client.stream_chat(QUESTION, model="m")),
                 client.models, lambda: client.load_adapter("v", "/x")):
        with pytest.raises(ServingUnavailable, match="unreachable"):
            call()


# ----- vLLM and TGI: a stand-in speaking their documented HTTP routes (a protocol fixture) -----

class _StandIn(ThreadingHTTPServer):
    """vLLM (`vllm serve --api-key K --enable-lora`, runtime LoRA updating on): every /v1 route needs
    the bearer key; /v1/load_lora_adapter and /v1/unload_lora_adapter take lora_name/lora_path; chat
    answers as the model asked for, or as ``answers_as`` when set (a server that ignores the adapter).
    TGI: the same chat route without a key, and no runtime adapter routes (404)."""

    def __init__(self, flavour: str, api_key: str = "", answers_as: str | None = None):
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        self.flavour, self.api_key, self.answers_as = flavour, api_key, answers_as
        self.base, self.loras, self.seen = "base-model", {}, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _StandInHandler(BaseHTTPRequestHandler):
    server: _StandIn

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, body: dict) -> None:
        stand_in = self.server
        stand_in.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if stand_in.flavour == "vllm" and stand_in.api_key and self.path.startswith("/v1") and (
                self.headers.get("Authorization") != f"Bearer {stand_in.api_key}"):
            return self._reply(401, {"error": "Unauthorized"})
        if self.path == "/v1/models":
            cards = [{"id": stand_in.base, "object": "model", "root": stand_in.base, "parent": None}]
            cards += [{"id": n, "object": "model", "root": p, "parent": stand_in.base}
                      for n, p in stand_in.loras.items()]
            return self._reply(200, {"object": "list", "data": cards})
        if self.path == "/v1/chat/completions":
            model = stand_in.answers_as or body.get("model") or stand_in.base
            return self._reply(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "High blood pressure."},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})
        if stand_in.flavour == "vllm" and self.path == "/v1/load_lora_adapter":
            stand_in.loras[body["lora_name"]] = body["lora_path"]
            return self._reply(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if stand_in.flavour == "vllm" and self.path == "/v1/unload_lora_adapter":
            stand_in.loras.pop(body["lora_name"])
            return self._reply(200, f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")
        return self._reply(404, {"error": "Not Found"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route({})

    def do_POST(self) -> None:  # noqa: N802
        self._route(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"))


@pytest.fixture
def stand_in():
    started = []

    def start(flavour: str, **kwargs) -> _StandIn:
        server = _StandIn(flavour, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_against_vllm_the_token_goes_with_chat_and_control(stand_in):
    vllm = stand_in("vllm", api_key="the-key")
    client = ServingClient(vllm.url, token="the-key", backend="vllm")
    client.load_adapter("med-v0001", "/adapters/med-v0001")
    assert client.loaded_adapters() == ["med-v0001"]
    answer = client.chat(QUESTION, model="med-v0001", max_tokens=8)
    assert (answer.model, answer.text, answer.completion_tokens) == ("med-v0001", "High blood pressure.", 4)
    assert client.smoke_test("med-v0001").model == "med-v0001"
    client.unload_adapter("med-v0001")
    assert client.loaded_adapters() == []
    assert {auth for _, _, auth in vllm.seen} == {"Bearer the-key"}  # every call, chat included
    assert ("POST", "/v1/chat/completions", "Bearer the-key") in vllm.seen

    # The embedded engine's client sends no key on chat: vLLM would refuse it.
    with pytest.raises(ServingRejected) as refused:
        ServingClient(vllm.url, token="the-key", backend="embedded").chat(QUESTION, model="base-model")
    assert refused.value.status == 401


def test_against_tgi_adapter_control_says_what_to_do_and_sends_nothing(stand_in):
    tgi = stand_in("tgi")
    client = ServingClient(tgi.url, token="the-key", backend="tgi")
    for control in (lambda: client.load_adapter("med-v0001", "/adapters/med-v0001"),
                    lambda: client.unload_adapter("med-v0001")):
        with pytest.raises(ControlUnsupported, match="LORA_ADAPTERS and restart"):
            control()
    assert not [path for _, path, _ in tgi.seen if "lora" in path]
    answer = client.chat(QUESTION, model="base-model", max_tokens=8)
    assert answer.model == "base-model" and ("POST", "/v1/chat/completions", None) in tgi.seen  # no key on chat


def test_a_version_served_under_another_name_is_never_made_live(stand_in, tmp_path):
    """A server that loads the version but answers as the base model fails the smoke test: nothing flips."""
    from adapters import rollout
    from adapters.registry import Registry, Status
    from careloop import db

    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    registry = Registry(db.sessions_for(url), "base-model")
    for name in ("wn-v0001", "wn-v0002"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
        registry.register(name, tmp_path / name, actor="test")
    good = stand_in("vllm", api_key="k")
    rollout.promote(registry, "wn-v0001", ServingClient(good.url, token="k", backend="vllm"), actor="admin")
    ignoring = stand_in("vllm", api_key="k", answers_as="base-model")
    with pytest.raises(ServingUnavailable, match="smoke test of wn-v0002 failed: answered by 'base-model'"):
        rollout.promote(registry, "wn-v0002", ServingClient(ignoring.url, token="k", backend="vllm"), actor="admin")
    assert "wn-v0002" in ignoring.loras, "it was loaded, then failed to answer as itself"
    assert registry.live().name == "wn-v0001" and registry.get("wn-v0002").status == Status.CANDIDATE


class _SplitCharacterHandler(BaseHTTPRequestHandler):
    """A chat stream as vLLM sends it (raw UTF-8 in the JSON, no charset in the Content-Type), each
    multi-byte character cut between two network writes."""

    ANSWER = ("Fever is 38 °C", " or more; 5 µg", " 🌡")

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in self.ANSWER:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "base-model",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            data = f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
            cut = next((i + 1 for i, byte in enumerate(data) if byte >= 0x80), len(data) // 2)  # inside "°"
            for part in (data[:cut], data[cut:]):
                self.wfile.write(part)
                self.wfile.flush()
                time.sleep(0.05)  # the two halves arrive apart
        self.wfile.write(b"data: [DONE]\n\n")


def test_a_character_split_between_network_chunks_arrives_whole():
    """Issue 19, 7: the client decodes the stream's bytes incrementally (huggingface_hub's lines over
    httpx's UTF-8 decoder), so a character cut between two chunks is no "�". (careloop's own server
    sends JSON with ASCII escapes; vLLM and TGI send raw UTF-8.)"""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SplitCharacterHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ServingClient(f"http://127.0.0.1:{server.server_address[1]}", backend="vllm")
        pieces = [delta.text for delta in client.stream_chat(QUESTION, model="base-model")]
    finally:
        server.shutdown()
        server.server_close()
    assert pieces == list(_SplitCharacterHandler.ANSWER)
