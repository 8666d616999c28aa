"""Serving benchmark: the embedded engine against a naive one-request-at-a-time server, in one run.

    .venv/bin/python bench/serving.py [--model DIR] [--tokens 64] [--rounds 6] [--cycles 10]

Prints, all measured on the same model and machine in this one run:
  1. aggregate tokens/s of 8 concurrent clients against `careloop serve` / the same clients against
     a naive HTTP server that runs transformers.generate one request at a time (target >= 4x);
     the same with the 8 clients spread over 4 adapters (target >= 3x),
  2. time to first token p50/p95 for 8 streaming clients over 4 adapters,
  3. time from `promote` returning to the first answer from the new version (target < 1 s),
  4. failed requests during N promote/rollback cycles under load (target 0).

Set BENCH_KEEP=1 to keep the working directory (server log, adapters) for a look afterwards.

Both servers get the same requests (whole answers of exactly --tokens tokens, greedy) from the
same pooled HTTP client. Adapters are random-initialised LoRA weights: throughput does not
depend on what they learned.
"""

from __future__ import annotations

import argparse
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
CLIENTS = 8
TOKEN = "bench-token"
# One pooled client, as a real front end keeps: a new httpx client per request costs more than
# the tiny model's whole answer (it loads the CA bundle each time).
HTTP = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64))


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


def start_naive_server(model_dir: Path, adapter_root: Path, adapters: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--naive-server", str(port), "--model", str(model_dir),
                                "--adapter-root", str(adapter_root), *adapters])
    return process, _wait_healthy(process, f"http://127.0.0.1:{port}", None)


def _wait_healthy(process: subprocess.Popen, url: str, log: Path | None) -> str:
    for _ in range(600):
        try:
            if HTTP.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{url} did not start" + (f":\n{log.read_text()[-2000:]}" if log else ""))


def start_server(home: Path, model_dir: Path, adapter_root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env.update({"CARELOOP_HOME": str(home), "CARELOOP_BASE_MODEL": str(model_dir),
                "CARELOOP_ADAPTER_DIR": str(adapter_root), "CARELOOP_CONTROL_TOKEN": TOKEN,
                "CARELOOP_SERVING_PORT": str(port), "CARELOOP_MAX_BATCH": str(CLIENTS),
                "CARELOOP_LOG_LEVEL": "WARNING"})
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
                               stdout=(home / "serve.log").open("w"), stderr=subprocess.STDOUT)
    return process, _wait_healthy(process, f"http://127.0.0.1:{port}", home / "serve.log")


def stream_once(url: str, model: str, max_tokens: int, seed: int) -> tuple[float, int]:
    """One streamed chat with exactly max_tokens tokens; returns (time to first token, tokens)."""
    body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True, "seed": seed,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    tokens = 0
    with HTTP.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, tokens


def whole_answers_tokens_per_second(url: str, models: list[str], max_tokens: int, rounds: int) -> float:
    """Concurrent clients each asking for a whole (non-streamed) answer; aggregate tokens/s."""
    def ask(model: str) -> int:
        body = {"model": model, "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True}
        response = HTTP.post(f"{url}/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    ask(models[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(len(models)) as pool:
        generated = sum(sum(pool.map(ask, models)) for _ in range(rounds))
    return generated / (time.perf_counter() - started)


def streamed_time_to_first_token(url: str, models: list[str], max_tokens: int, rounds: int) -> list[float]:
    """Concurrent streaming clients; the time each waited for its first token."""
    ttfts = []
    with ThreadPoolExecutor(len(models)) as pool:
        for round_index in range(rounds):
            ttfts += [first for first, _ in pool.map(
                lambda m: stream_once(url, m[1], max_tokens, m[0] + round_index), enumerate(models))]
    return ttfts


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
    parser.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--adapter-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("adapters", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        naive_server_main(Path(args.model), args.adapter_root, args.adapters, args.naive_server)
        return
    configure_logging("WARNING")

    work = Path(tempfile.mkdtemp(prefix="careloop-bench-"))
    try:
        model_dir = bench_model(args.model)
        adapter_root = work / "adapters"
        adapters = make_adapters(model_dir, adapter_root, 4)
        print(f"model {model_dir.name}, {args.tokens} tokens per request, {CLIENTS} clients, "
              f"{args.rounds} rounds; torch threads {__import__('torch').get_num_threads()}")

        spread = [adapters[i % 4] for i in range(CLIENTS)]
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
            ours_base = whole_answers_tokens_per_second(url, [base] * CLIENTS, args.tokens, args.rounds)
            ours_lora = whole_answers_tokens_per_second(url, spread, args.tokens, args.rounds)
            ttfts = streamed_time_to_first_token(url, spread, args.tokens, args.rounds)
            switch, failed, answered = promotion_figures(url, adapter_root, base, work, args.cycles)
        finally:
            process.terminate()
            process.wait(30)
    finally:
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)

    quantiles = statistics.quantiles(ttfts, n=20)
    rows = [
        ("8 clients, base model: tokens/s ours / naive", f"{ours_base:.0f} / {naive_base:.0f}",
         f"{ours_base / naive_base:.2f}x", ">= 4x"),
        ("8 clients over 4 adapters: tokens/s ours / naive", f"{ours_lora:.0f} / {naive_lora:.0f}",
         f"{ours_lora / naive_lora:.2f}x", ">= 3x"),
        ("streamed, 8 clients over 4 adapters: time to first token p50 / p95 (s)",
         f"{statistics.median(ttfts):.3f} / {quantiles[18]:.3f}", "", ""),
        ("promote returned -> first answer by new version (s)", f"{switch:.3f}", "", "< 1 s"),
        (f"failed requests in {args.cycles} promote+rollback cycles", f"{failed} of {answered + failed}", "", "0"),
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
