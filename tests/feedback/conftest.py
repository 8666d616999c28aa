"""A real `careloop worker` on a private Redis and a migrated database."""

from __future__ import annotations

import pytest
from processes import start_worker
from sqlalchemy import func, select

from careloop import db
from careloop.redis_server import start_local_redis
from careloop.settings import load_settings


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
    running.kill()  # its broker is this test's alone: nothing waits for a warm shutdown (2-3 s)


@pytest.fixture
def settings(tmp_path, store, broker):
    return load_settings(home=tmp_path / "bot", database_url=store.database_url, redis_url=broker.url)
