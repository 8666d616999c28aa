"""Disk full where the bot keeps its outbox (a real 1 MiB tmpfs that fills up): a new event is
refused with a message that says so and that nothing was recorded, never half-kept; every event
accepted before it is still delivered once space is back; submitting works again."""

from __future__ import annotations

import pytest
from conftest import fill_disk

from careloop.redis_server import start_local_redis
from feedback import store as tables
from feedback.api import FeedbackAPI, FeedbackUnavailable

from .conftest import start_worker, wait_for
from .test_ingest import comparison


def test_a_full_disk_refuses_new_feedback_clearly_and_loses_nothing_accepted(settings, store, broker, small_disk,
                                                                           tmp_path):
    own = settings.model_copy(update={"outbox_path": small_disk / "outbox.db"})
    broker.stop()  # accepted events wait in the outbox, on the disk that is about to fill up
    api = FeedbackAPI(own, flush_interval=0.2)
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
        worker.process.terminate()
        worker.process.wait(30)
        restarted.stop()
