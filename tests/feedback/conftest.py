"""A real `careloop worker` on a private Redis and a migrated database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from careloop import db
from careloop.redis_server import start_local_redis
from careloop.settings import load_settings


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    env: dict[str, str]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crash or an OOM kill would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


def start_worker(home: Path, database_url: str, redis_url: str, queues: str = "feedback", **settings: str) -> Worker:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env.update({"CARELOOP_HOME": str(home), "CARELOOP_DATABASE_URL": database_url,
                "CARELOOP_REDIS_URL": redis_url, "CARELOOP_CELERY_VISIBILITY_TIMEOUT": "10"})
    env.update({f"CARELOOP_{key.upper()}": value for key, value in settings.items()})
    home.mkdir(parents=True, exist_ok=True)
    log = home / "worker.log"
    process = subprocess.Popen([sys.executable, "-m", "careloop", "worker", "--queues", queues],
                               env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"careloop worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if " ready." in log.read_text():
            return Worker(process, log, env)
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"careloop worker was not ready in 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def store(database_url):
    """The store on a migrated SQLite file or PostgreSQL database; ``count(table)`` and ``rows(table)`` read it."""
    url = database_url
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)

    class Store:
        database_url = url

        @staticmethod
        def rows(table):
            with sessions() as session:
                return list(session.scalars(select(table).order_by(table.id)))

        @staticmethod
        def count(table) -> int:
            with sessions() as session:
                return session.scalar(select(func.count()).select_from(table))

    yield Store
    engine.dispose()


@pytest.fixture
def broker(tmp_path):
    """A private Redis of this test alone, so the test can stop and restart it."""
    server = start_local_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def worker(tmp_path, store, broker):
    running = start_worker(tmp_path / "worker", store.database_url, broker.url)
    yield running
    running.process.terminate()
    running.process.wait(30)


@pytest.fixture
def settings(tmp_path, store, broker):
    return load_settings(home=tmp_path / "bot", database_url=store.database_url, redis_url=broker.url)


def wait_for(condition, timeout: float = 30, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {message}")


SCORES = {"accuracy": 4, "helpfulness": 3, "relevance": 5, "comprehensiveness": 2}


def label(sessions, item_id: int | None, annotator: str, choice: str, **fields) -> None:
    """Store one comparison through the same path the worker uses."""
    from feedback import schemas
    from feedback.store import store_event

    item = {"prompt": "What lowers blood pressure?", "response_a": "Salt restriction and exercise.",
            "response_b": "Nothing.", "source_a": "med-v0002", "source_b": "med-v0001"}
    if item_id is not None:  # the item's texts come from the queue
        from feedback.store import ReviewItem

        with sessions() as session:
            stored = session.get(ReviewItem, item_id)
            item = {"prompt": stored.prompt, "response_a": stored.response_a, "response_b": stored.response_b,
                    "source_a": stored.source_a, "source_b": stored.source_b}
    store_event(sessions, schemas.Comparison(review_item_id=item_id, annotator=annotator, choice=choice,
                                             shown_order="ab", scores_a=SCORES, scores_b=SCORES,
                                             **{**item, **fields}))
