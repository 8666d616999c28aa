"""Starting real careloop processes for the tests: `careloop serve`, a Celery worker and the bot. Each is a
`python -m cli ...` subprocess with its own CARELOOP_* environment; a process that does
not come up fails the test with its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.up import WORKER_READY


def careloop_env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env["CARELOOP_HOME"] = str(home)
    env.update({f"CARELOOP_{key.upper()}": str(value) for key, value in settings.items()})
    return env


TOKEN = "test-control-token"  # serving's control token in every test


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
    """`careloop serve` over ``model_dir`` with adapters from ``adapter_dir``; any other setting by name."""
    from careloop.redis_server import free_port

    port = int(settings.pop("serving_port", 0)) or free_port()
    env = careloop_env(home, base_model=str(model_dir), adapter_dir=str(adapter_dir), control_token=TOKEN,
                       serving_port=str(port), **settings)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_until(process, log, lambda: _answers(f"{url}/health"), "careloop serve", 120)
    return Server(url, TOKEN, adapter_dir, process, log)


def stop_server(server: Server) -> None:
    _stop(server.process)


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    env: dict[str, str]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crash or an OOM kill would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start_worker(home: Path, database_url: str, redis_url: str, queues: str = "feedback", **settings: str) -> Worker:
    settings = {"database_url": database_url, "redis_url": redis_url, "celery_visibility_timeout": "10", **settings}
    env = careloop_env(home, **settings)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "worker.log"
    process = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--queues", queues],
                               env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    _wait_until(process, log, lambda: WORKER_READY in log.read_text(), "careloop worker", 60)
    return Worker(process, log, env)


@dataclass
class Bot:
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        _stop(self.process)


def start_bot(home: Path, port: int, **settings: str) -> Bot:
    env = careloop_env(home, bot_port=str(port), **settings)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "bot.log"
    process = subprocess.Popen([sys.executable, "-m", "cli", "bot"], env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_until(process, log, lambda: _answers(f"{url}/"), "careloop bot", 90)
    return Bot(url, process, log)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def _wait_until(process: subprocess.Popen, log: Path, ready: Callable[[], bool], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"{name} was not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def wait_for(condition: Callable[[], object], timeout: float = 30, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {message}")
