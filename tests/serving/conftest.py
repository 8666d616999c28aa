"""A real `careloop serve` process on a free port over the tiny demo model, and LoRA adapters trained here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from careloop.redis_server import free_port

TOKEN = "test-control-token"


def train_adapter(base_dir: Path, out: Path, answer: str, seed: int) -> Path:
    """A real (if tiny) LoRA fine-tune: a few steps teaching the model one answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                      task_type="CAUSAL_LM"))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is hypertension?"},
                                          {"role": "assistant", "content": answer}], tokenize=False)
    batch = tokenizer([text] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(25):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    train_adapter(tiny_model_dir, root / "med-v0001", "Hypertension is high blood pressure.", 1)
    train_adapter(tiny_model_dir, root / "med-v0002", "Drink water, rest and see a doctor.", 2)
    return root


@dataclass
class Server:
    url: str
    token: str
    adapter_dir: Path
    process: subprocess.Popen
    log: Path

    @property
    def control_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def load(self, name: str, path: Path | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/load_lora_adapter", headers=self.control_headers, timeout=60,
                          json={"lora_name": name, "lora_path": str(path or self.adapter_dir / name)})

    def unload(self, name: str) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/unload_lora_adapter", headers=self.control_headers,
                          json={"lora_name": name}, timeout=60)


def start_server(home: Path, model_dir: Path, adapter_dir: Path, **settings: str) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env.update({"CARELOOP_HOME": str(home), "CARELOOP_BASE_MODEL": str(model_dir),
                "CARELOOP_ADAPTER_DIR": str(adapter_dir), "CARELOOP_CONTROL_TOKEN": TOKEN,
                "CARELOOP_SERVING_PORT": str(port)})
    env.update({f"CARELOOP_{k.upper()}": v for k, v in settings.items()})
    home.mkdir(parents=True, exist_ok=True)
    log = home / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "careloop", "serve"], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"careloop serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return Server(url, TOKEN, adapter_dir, process, log)
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"careloop serve did not become healthy in 120 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory, tiny_model_dir, adapter_dir):
    """Start extra servers with other settings (e.g. max_batch="1"); all are stopped at the end."""
    started: list[Server] = []

    def start(**settings: str) -> Server:
        started.append(start_server(tmp_path_factory.mktemp("serve"), tiny_model_dir, adapter_dir, **settings))
        return started[-1]

    yield start
    for running in started:
        stop_server(running)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, adapter_dir):
    running = start_server(tmp_path_factory.mktemp("serve"), tiny_model_dir, adapter_dir)
    yield running
    stop_server(running)
