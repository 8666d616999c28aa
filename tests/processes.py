"""Starting real careloop processes for the tests: a Celery worker and the bot. Each is a
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

from cli.up import WORKER_READY
import pytest


def careloop_env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env["CARELOOP_HOME"] = str(home)
    env.update({f"CARELOOP_{key.upper()}": str(value) for key, value in settings.items()})
    return env


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
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_bot(home: Path, port: int, **settings: str) -> Bot:
    env = careloop_env(home, bot_port=str(port), **settings)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "bot.log"
    process = subprocess.Popen([sys.executable, "-m", "cli", "bot"], env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_until(process, log, answers, "careloop bot", 90)
    return Bot(url, process, log)


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
