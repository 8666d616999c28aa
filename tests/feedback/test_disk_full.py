"""Disk full (a real 2 MiB tmpfs that fills up) under each writer of clinicians' data.

- The bot's outbox: a new event is refused with a message that says so and that nothing was
  recorded, never half-kept; every event accepted before it is still delivered once space is back.
- The SQLite store: the worker retries; nothing is lost or stored twice once space is back.
- An export: the reason, no half-written export, nothing in the audit log."""

from __future__ import annotations

import pytest
from processes import start_worker, wait_for
from sqlalchemy import func, select
from support import fill_disk, label

from careloop import audit, db
from careloop.redis_server import start_local_redis
from careloop.settings import load_settings
from feedback import store as tables
from feedback.export import ExportConfig, export
from feedback.producer import FeedbackProducer, FeedbackUnavailable

from .test_ingest import comparison


def test_a_full_disk_refuses_new_feedback_clearly_and_loses_nothing_accepted(settings, store, broker, small_disk,
                                                                           tmp_path):
    own = settings.model_copy(update={"outbox_path": small_disk / "outbox.db"})
    broker.stop()  # accepted events wait in the outbox, on the disk that is about to fill up
    api = FeedbackProducer(own, flush_interval=0.2)
    accepted = [api.submit_comparison(**comparison(annotator=f"nurse.{i}")) for i in range(5)]
    filler = fill_disk(small_disk)
    with pytest.raises(FeedbackUnavailable, match="cannot write to its disk .* Nothing was recorded"):
        for i in range(2000):  # SQLite may still fit a few rows in pages it already has
            accepted.append(api.submit_comparison(**comparison(annotator=f"nurse.late{i}")))
    assert len(accepted) < 2000

    filler.unlink()  # the administrator makes room
    accepted.append(api.submit_comparison(**comparison(annotator="nurse.after")))
    restarted = start_local_redis(broker.directory, port=broker.port)
    worker = start_worker(tmp_path / "worker", store.database_url, restarted.url)
    try:
        wait_for(lambda: store.count(tables.Comparison) == len(accepted), timeout=60,
                 message=f"the {len(accepted)} accepted events")
        assert [c.event_id for c in store.rows(tables.Comparison)] == accepted  # once each, in order
        wait_for(lambda: len(api.outbox) == 0, message="the outbox to see the events stored")
    finally:
        api.close()
        worker.stop()
        restarted.stop()


def test_a_full_disk_under_the_sqlite_store_delays_events_and_loses_none(broker, small_disk, tmp_path):
    url = f"sqlite:///{small_disk / 'careloop.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)

    def stored() -> list:
        with sessions() as session:
            return list(session.scalars(select(tables.Comparison.event_id)))

    worker = start_worker(tmp_path / "worker", url, broker.url)
    api = FeedbackProducer(load_settings(home=tmp_path / "bot", database_url=url, redis_url=broker.url),
                      flush_interval=0.2)
    try:
        accepted = [api.submit_comparison(**comparison(annotator=f"nurse.{i}")) for i in range(3)]
        wait_for(lambda: len(stored()) == 3, message="the first events stored")
        filler = fill_disk(small_disk)
        accepted += [api.submit_comparison(**comparison(annotator=f"nurse.full{i}")) for i in range(20)]
        wait_for(lambda: worker.log.read_text().count("database or disk is full") >= 2, timeout=120,
                 message="the worker to fail on the full disk and retry, twice")
        assert len(stored()) < len(accepted), "the store wrote on a full disk?"
        assert worker.process.poll() is None, "the worker keeps running"

        filler.unlink()  # the administrator makes room
        wait_for(lambda: len(stored()) == len(accepted), timeout=120,
                 message=f"the {len(accepted)} accepted events once space is back")
        assert sorted(stored()) == sorted(accepted), "each accepted event stored once"
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(tables.DeadLetter)) == 0
    finally:
        api.close()
        worker.stop()
        engine.dispose()


def test_an_export_to_a_full_disk_says_why_and_leaves_nothing(store, small_disk, cli):
    sessions = db.session_factory(db.make_engine(store.database_url))
    for annotator in ("nurse.a", "dr.p"):
        label(sessions, None, annotator, "a")
    filler = fill_disk(small_disk)
    with pytest.raises(OSError, match="No space left on device"):
        export(sessions, ExportConfig("dpo"), small_disk / "dpo", actor="test")
    done = cli("export", "--kind", "dpo", "--out", str(small_disk / "by-cli"),
               env={"CARELOOP_DATABASE_URL": store.database_url})
    assert done.returncode == 1 and "careloop: No space left on device" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in small_disk.iterdir()] == ["filler"], "no half-written export"
    with sessions() as session:
        assert [e for e in audit.recent(session) if e.action == "feedback.export"] == []
    filler.unlink()
    manifest = export(sessions, ExportConfig("dpo"), small_disk / "dpo", actor="test")
    assert sum(manifest.counts.values()) > 0 and (small_disk / "dpo" / "manifest.json").exists()
