"""PostgreSQL restarted under load: a private PostgreSQL server (its own data directory and port, so
the shared one the other tests use is left alone) is stopped the hard way (`pg_ctl -m immediate`,
what a crash or an OOM kill leaves) while students' messages stream in, then started again.

What users see: nothing; submitting never fails (events wait in the outbox and in Redis).
What is retried: the worker's batches (OperationalError, with backoff) and the outbox's checks.
Proof: every accepted event is stored exactly once, none is dead-lettered, the outbox empties."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from processes import start_worker, wait_for

from careloop import db
from careloop.redis_server import free_port
from careloop.settings import load_settings
from feedback import store as tables
from feedback.producer import FeedbackProducer

EVENTS = 600


class PrivatePostgres:
    def __init__(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins or shutil.which("runuser") is None or os.geteuid() != 0:
            pytest.fail("This test starts a private PostgreSQL server: it needs Debian's postgresql package "
                        "(/usr/lib/postgresql/*/bin) and root, to run it as the postgres user.")
        self.bin = bins[-1].parent
        # Not under pytest's tmp_path: it is private to root, and the server runs as postgres.
        directory = Path(tempfile.mkdtemp(prefix="careloop-postgres-"))
        shutil.chown(directory, "postgres", "postgres")
        self.directory = directory
        self.data, self.port = directory / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/careloop"
        self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, tool: str, *args: str) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args],
                              capture_output=True, text=True, timeout=120, cwd="/")
        assert done.returncode == 0, f"{tool} failed: {done.stderr[-2000:]}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.data / "server.log"),
                          "-w", "start")

    def crash(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def postgres():
    server = PrivatePostgres()
    server.start()
    admin = sa.create_engine(server.url.replace("/careloop", "/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql("CREATE DATABASE careloop")
    admin.dispose()
    yield server
    server.stop()


def test_a_postgres_crash_and_restart_under_load_loses_and_duplicates_nothing(tmp_path, postgres, broker):
    db.upgrade(postgres.url)
    engine = db.make_engine(postgres.url)
    sessions = db.session_factory(engine)

    def count(table) -> int:
        with sessions() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(table))

    worker = start_worker(tmp_path / "worker", postgres.url, broker.url)
    api = FeedbackProducer(load_settings(home=tmp_path / "bot", database_url=postgres.url, redis_url=broker.url),
                      flush_interval=0.2, batch_size=20)
    sent: list[uuid.UUID] = []
    failures: list[BaseException] = []
    conversation = uuid.uuid4()

    def students() -> None:  # a steady stream, about 60 messages a second, through the outage
        try:
            for i in range(EVENTS):
                sent.append(api.log_turn(conversation_id=conversation, user="student", role="user",
                                         content=f"question {i}"))
                time.sleep(1 / 60)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    stream = threading.Thread(target=students)
    try:
        stream.start()
        wait_for(lambda: count(tables.Message) >= 50, timeout=60, message="the worker to start storing")
        engine.dispose()
        postgres.crash()
        time.sleep(4)  # the stream goes on while the database is down
        assert stream.is_alive(), "the stream finished before the database came back; send more events"
        postgres.start()
        stream.join(60)
        assert failures == [], f"submitting failed while the database was down: {failures}"
        assert len(sent) == EVENTS
        wait_for(lambda: count(tables.Message) == EVENTS, timeout=180, message=f"all {EVENTS} events stored")
        wait_for(lambda: len(api.outbox) == 0, timeout=60, message="the outbox to see every event stored")
        with sessions() as session:
            stored = list(session.scalars(sa.select(tables.Message.event_id)))
        assert len(stored) == EVENTS and set(stored) == set(sent)
        assert count(tables.DeadLetter) == 0
        assert "OperationalError" in worker.log.read_text() or "Retry" in worker.log.read_text()
    finally:
        stream.join(60)
        api.close()
        worker.stop()
        engine.dispose()
