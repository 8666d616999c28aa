"""Shared fixtures: real services started by the suite itself (a private Redis, a fresh PostgreSQL
database, the tiny demo model). A service that cannot be had fails the test with what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_model_dir(request) -> Path:
    """The tiny demo model, built once and cached across runs in pytest's cache directory."""
    from careloop.demo_model import build_demo_model

    out = Path(request.config.cache.mkdir("careloop")) / "careloop-demo-tiny"
    build_demo_model(out, size="tiny", seed=0, seed_dir=SEED_DIR, progress=False, log=lambda _: None)
    return out


@pytest.fixture
def cli():
    """Run the real `careloop` entry point in a subprocess, as a user would."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "careloop", *args], capture_output=True,
                              text=True, env=full_env, timeout=timeout)

    return run
