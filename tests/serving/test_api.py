"""The serving HTTP API against a real server process: OpenAI and TGI shapes, adapters, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from huggingface_hub import InferenceClient

QUESTION = [{"role": "user", "content": "What is hypertension?"}]


def chat(server, model: str, messages=QUESTION, **params) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": messages, **params})


@pytest.fixture
def base_model(server) -> str:
    return httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]


def test_health_info_and_models(server, base_model):
    assert httpx.get(f"{server.url}/health").status_code == 200
    info = httpx.get(f"{server.url}/info").json()
    assert info["model_id"] == base_model == "careloop-demo-tiny"
    assert info["demo_model"] is True  # a demo model says so
    assert info["max_total_tokens"] == 512
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0] | {"created": 0} == {
        "id": base_model, "object": "model", "created": 0, "owned_by": "careloop", "root": base_model,
        "parent": None, "max_model_len": 512, "demo_model": True}


def test_chat_through_inference_client_stream_and_not(server, base_model):
    client = InferenceClient(base_url=server.url)
    whole = client.chat_completion(QUESTION, model=base_model, max_tokens=12, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    chunks = list(client.chat_completion(QUESTION, model=base_model, max_tokens=12, temperature=0,
                                         stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_sampling_is_reproducible_with_a_seed(server, base_model):
    first, again, other = (chat(server, base_model, max_tokens=16, temperature=1.0, seed=s).json()
                           for s in (7, 7, 8))
    text = lambda r: r["choices"][0]["message"]["content"]  # noqa: E731
    assert text(first) == text(again)
    assert text(first) != text(other)


def test_a_request_without_sampling_settings_is_decoded_as_careloop_decodes_every_answer(server, base_model,
                                                                                          tiny_model_dir, tmp_path):
    """A client that sets nothing (curl, a notebook) reads what the chat shows: careloop.decoding's (for the
    tiny model: its generation config's temperature 1.0, with careloop's repetition penalty; the settings'
    where they say, here greedy); what the client sets (through huggingface_hub, the penalty as an
    extension field) wins."""
    from processes import start_server, stop_server

    from careloop.decoding import decoding_for
    from careloop.settings import load_settings

    decoding = decoding_for(load_settings(base_model=str(tiny_model_dir)))
    assert (decoding.temperature, decoding.top_p, decoding.repetition_penalty) == (1.0, 1.0, 1.1)
    text = lambda r: r["choices"][0]["message"]["content"]  # noqa: E731
    unset = text(chat(server, base_model, max_tokens=48, seed=3, ignore_eos=True).json())
    params = decoding.request_params(seed=3) | {"max_tokens": 48}
    params["extra_body"] = params["extra_body"] | {"ignore_eos": True}
    explicit = InferenceClient(base_url=server.url).chat_completion(QUESTION, model=base_model, **params)
    assert unset == explicit.choices[0].message.content

    greedy = start_server(tmp_path / "greedy", tiny_model_dir, tmp_path / "adapters", decoding_temperature="0")
    try:
        answers = {text(chat(greedy, base_model, max_tokens=48, seed=seed, ignore_eos=True).json()) for seed in (1, 2)}
        sampled = text(chat(greedy, base_model, max_tokens=48, seed=1, ignore_eos=True, temperature=1.0).json())
    finally:
        stop_server(greedy)
    assert len(answers) == 1 and sampled not in answers, "the server's decoding (greedy) applies when unset"


def test_stop_sequence_and_length_limit(server, base_model):
    # The tiny model often ends early: take the first seed whose answer runs past 8 tokens.
    for seed in range(50):
        full = chat(server, base_model, max_tokens=30, temperature=1.0, seed=seed).json()
        content = full["choices"][0]["message"]["content"]
        if full["usage"]["completion_tokens"] > 8 and content.strip():
            break
    else:
        pytest.fail("no seed in 0-49 made the tiny model write more than 8 tokens")
    # Same seed, same first tokens: a 3-token cap must cut the answer for length.
    short = chat(server, base_model, max_tokens=3, temperature=1.0, seed=seed).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3
    stop = content.strip()[:2]
    assert stop, "the sampled answer is empty; the tiny model should say something at temperature 1"
    cut = chat(server, base_model, max_tokens=30, temperature=1.0, seed=seed, stop=[stop]).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == content[:content.index(stop)]


def test_tgi_generate_and_generate_stream(server):
    body = {"inputs": "Hypertension is", "parameters": {"max_new_tokens": 10, "details": True}}
    result = httpx.post(f"{server.url}/generate", json=body, timeout=60).json()
    assert result["details"]["finish_reason"] in ("length", "eos_token")
    assert result["details"]["generated_tokens"] <= 10
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1]["generated_text"] == result["generated_text"]
    assert "".join(e["token"]["text"] for e in events[:-1]) == result["generated_text"]


def test_adapters_load_route_and_unload(server, base_model):
    assert server.load("med-v0001").status_code == 200
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert models["med-v0001"]["parent"] == base_model
    # Same seed, same random stream: any difference comes from the adapter's weights.
    base = chat(server, base_model, max_tokens=16, temperature=1.0, seed=5).json()
    tuned = chat(server, "med-v0001", max_tokens=16, temperature=1.0, seed=5).json()
    assert tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    assert tuned["model"] == "med-v0001"
    tgi = httpx.post(f"{server.url}/generate", timeout=60, json={
        "inputs": "Hi", "parameters": {"adapter_id": "med-v0001", "max_new_tokens": 4}})
    assert tgi.status_code == 200

    reused = server.load("med-v0001", server.adapter_dir / "med-v0002")
    assert reused.status_code == 409 and "immutable" in reused.json()["error"]["message"]

    assert server.unload("med-v0001").status_code == 200
    assert "med-v0001" not in [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
    gone = chat(server, "med-v0001", max_tokens=4)
    assert gone.status_code == 404 and "does not exist" in gone.json()["error"]["message"]
    assert server.unload("med-v0001").status_code == 404


def test_adapter_paths_are_shown_to_the_token_holder_only(server, base_model):
    """Issue 18, 12: `/v1/models` showed every adapter's directory on the server's disk to anyone."""
    assert server.load("med-v0002").status_code == 200
    try:
        shown = httpx.get(f"{server.url}/v1/models")
        anyone = {m["id"]: m for m in shown.json()["data"]}
        holder = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models", headers=server.control_headers)
                  .json()["data"]}
        wrong = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models", headers={
            "Authorization": "Bearer not-the-token"}).json()["data"]}
    finally:
        server.unload("med-v0002")
    assert anyone["med-v0002"]["root"] == wrong["med-v0002"]["root"] == "med-v0002"
    assert str(server.adapter_dir) not in shown.text
    assert holder["med-v0002"]["root"] == str(server.adapter_dir / "med-v0002")
    assert anyone[base_model] == holder[base_model] | {"created": anyone[base_model]["created"]}


def test_mixed_adapter_batch_equals_one_at_a_time(server, base_model):
    for name in ("mix-a", "mix-b"):
        assert server.load(name,
                           server.adapter_dir / ("med-v0001" if name == "mix-a" else "med-v0002")).status_code == 200
    models = [base_model, "mix-a", "mix-b", "mix-a", base_model, "mix-b"]

    def answer(model: str, **params) -> str:
        return chat(server, model, max_tokens=16, **params).json()["choices"][0]["message"]["content"]

    for params in ({"temperature": 0}, {"temperature": 1.0, "seed": 11}):
        alone = [answer(m, **params) for m in models]
        before = _engine_counters(server)
        # Serving frozen while the six requests are sent: they all wait, so they meet in the engine.
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(len(models)) as pool:
                answers = [pool.submit(answer, m, **params) for m in models]
                time.sleep(0.5)
                os.kill(server.process.pid, signal.SIGCONT)
                together = [a.result() for a in answers]
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert together == alone, params
        after = _engine_counters(server)
        # The engine's own counters: the adapters really decoded together, in mixed batches.
        assert after["careloop_mixed_adapter_steps_total"] > before["careloop_mixed_adapter_steps_total"], after
        assert after["careloop_batched_steps_total"] > before["careloop_batched_steps_total"], after
    assert len(set(alone)) == 3  # three different models really answered
    for name in ("mix-a", "mix-b"):
        server.unload(name)


def _engine_counters(server) -> dict[str, float]:
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines
            if line.startswith(("careloop_mixed_adapter_steps_total", "careloop_batched_steps_total"))}


def test_control_routes_need_the_token(server):
    body = {"lora_name": "x", "lora_path": str(server.adapter_dir / "med-v0001")}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        for route in ("load_lora_adapter", "unload_lora_adapter"):
            response = httpx.post(f"{server.url}/v1/{route}", json=body, headers=headers)
            assert response.status_code == 401, (route, headers)
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        ("{not json", 400, "not valid JSON"),
        ({"model": "MODEL", "messages": []}, 422, "messages"),
        ({"messages": QUESTION}, 422, "model: Field required"),
        ({"model": "MODEL", "messages": QUESTION, "temperature": 5}, 422, "temperature"),
        ({"model": "MODEL", "messages": QUESTION, "top_p": 0}, 422, "top_p"),
        ({"model": "MODEL", "messages": QUESTION, "max_tokens": 0}, 422, "max_tokens"),
        ({"model": "MODEL", "messages": QUESTION, "repetition_penalty": 0.5}, 422, "repetition_penalty"),
        ({"model": "MODEL", "messages": QUESTION, "priority": 1000}, 422, "priority"),
        ({"model": "MODEL", "messages": QUESTION, "n": 2}, 422, "n:"),
        ({"model": "MODEL", "messages": [{"role": "robot", "content": "x"}]}, 422, "role"),
        ({"model": "MODEL", "messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"model": "no-such-adapter", "messages": QUESTION}, 404, "`no-such-adapter` does not exist"),
        ({"model": "MODEL", "messages": [{"role": "user", "content": "word " * 2000}]}, 400,
         "context is 512 tokens"),
        ({"model": "MODEL", "messages": QUESTION, "max_tokens": 5000}, 400, "maximum context length is 512"),
    ],
    ids=["malformed-json", "no-messages", "no-model", "temperature", "top_p", "max_tokens", "repetition_penalty",
         "priority", "n", "role", "stops", "unknown-adapter", "prompt-too-long", "completion-too-long"],
)
def test_bad_chat_input_gets_a_clear_error(server, base_model, payload, status, reason):
    content = payload if isinstance(payload, str) else json.dumps(payload).replace("MODEL", base_model)
    response = httpx.post(f"{server.url}/v1/chat/completions", content=content,
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert reason in error["message"] and error["code"] == status


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        ({"inputs": ""}, 422, "inputs"),
        ({"inputs": "x", "parameters": {"top_p": 1.0}}, 422, "top_p"),
        ({"inputs": "x", "parameters": {"adapter_id": "nope"}}, 404, "`nope` does not exist"),
        ({"inputs": "word " * 2000}, 400, "context is 512 tokens"),
    ],
    ids=["empty-inputs", "top_p", "unknown-adapter", "too-long"],
)
def test_bad_tgi_input_gets_a_tgi_shaped_error(server, payload, status, reason):
    response = httpx.post(f"{server.url}/generate", json=payload, timeout=60)
    assert response.status_code == status
    assert reason in response.json()["error"] and response.json()["error_type"]


def test_bad_adapters_are_refused_and_the_server_keeps_serving(server, base_model, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(server.adapter_dir / "med-v0001", outside)
    escape = server.load("escape", server.adapter_dir / ".." / outside.parent.name / "outside")
    assert escape.status_code == 400 and "inside the adapter directory" in escape.json()["error"]["message"]
    assert server.load("absolute", outside).status_code == 400

    empty = server.adapter_dir / "empty"
    empty.mkdir(exist_ok=True)
    missing = server.load("empty", empty)
    assert missing.status_code == 400 and "adapter_config.json missing" in missing.json()["error"]["message"]

    broken = server.adapter_dir / "broken"
    shutil.copytree(server.adapter_dir / "med-v0002", broken, dirs_exist_ok=True)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    corrupt = server.load("broken", broken)
    assert corrupt.status_code == 400 and "failed" in corrupt.json()["error"]["message"]

    bad_name = httpx.post(f"{server.url}/v1/load_lora_adapter", headers=server.control_headers,
                          json={"lora_name": "../evil", "lora_path": str(broken)})
    assert bad_name.status_code == 422
    assert chat(server, base_model, max_tokens=4).status_code == 200


def test_every_way_a_request_ends_has_a_finish_reason_in_both_protocols():
    """A request cut short (its client hung up, or serving stopping mid-answer) ended in a KeyError
    traceback in serving's log: neither protocol had a word for "cancelled" (issue 29, seen while
    stopping `careloop up` during a review fill)."""
    from serving.engine import FINISH_REASONS
    from serving.routes.openai import OPENAI_FINISH
    from serving.routes.tgi import TGI_FINISH

    assert set(OPENAI_FINISH) == set(FINISH_REASONS) == set(TGI_FINISH)
    assert OPENAI_FINISH["cancelled"] == "abort"  # vLLM's finish reason for an aborted request
