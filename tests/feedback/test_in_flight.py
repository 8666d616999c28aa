"""Issue 29, 2: a training run trains on what clinicians judged before it started. A run started while
their judgments were still in the bot's outbox or queued behind a review fill trained on none of them
(its export said train 0). The run now waits, within a bound, for feedback on its way, through the
real parts: the bot's outbox reporting to Redis, the feedback queue, a worker, the store, the snapshot."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict

import pytest
import redis
from processes import start_worker, wait_for
from support import SCORES, SEED_DIR

from careloop import db
from feedback import review_queue as queue
from feedback.in_flight import in_flight, wait_until_stored
from feedback.producer import FeedbackProducer
from trainer.config import TrainConfig
from trainer.runs import describe_data
from trainer.snapshot import build_snapshot

JUDGED = 6


def _judge(settings, sessions, tag: str = "asthma", reported: bool = True) -> FeedbackProducer:
    """A nurse judges ``JUDGED`` items through the bot's producer (``reported``: no worker is storing
    yet, and the test waits until the outbox has told Redis it holds them)."""
    from careloop.db import utcnow

    producer = FeedbackProducer(settings, flush_interval=0.1)
    for i in range(JUDGED):
        prompt = f"How is {tag} number {i} treated in children?"
        item = queue.add_item(sessions, prompt, f"Inhaled steroids {i}.", f"Antibiotics {i}.", "med-v0002",
                              "med-v0001", labels_needed=1, prompt_origin="seed")
        producer.submit_comparison(event_id=uuid.uuid4(), review_item_id=item, annotator="nurse.a", prompt=prompt,
                                   response_a=f"Inhaled steroids {i}.", response_b=f"Antibiotics {i}.",
                                   version_a="med-v0002", version_b="med-v0001", shown_order="ab", choice="a",
                                   scores_a=SCORES, scores_b=SCORES, created_at=utcnow())
    if not reported:
        return producer
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: in_flight(client).outbox_events == JUDGED, timeout=10, message="the outbox reported")
    client.close()
    return producer


def test_a_run_started_right_after_judgments_waits_for_them_and_trains_on_all(store, broker, settings, tmp_path):
    sessions = db.session_factory(db.make_engine(store.database_url))
    producer = _judge(settings, sessions)
    workers = []
    # The worker frees up 3 s after the run starts (as when a review fill finishes)
    later = threading.Timer(3, lambda: workers.append(start_worker(tmp_path / "worker", store.database_url,
                                                                   broker.url)))
    later.start()
    try:
        late = wait_until_stored(broker.url, timeout_seconds=90)
        snapshot = build_snapshot(tmp_path / "snapshot", TrainConfig(), SEED_DIR, sessions, in_flight=asdict(late))
    finally:
        later.join()
        producer.close()
        for worker in workers:
            worker.kill()
    assert late.empty and late.waited_seconds >= 2, late
    data = snapshot.clinician_data()
    assert data["pairs"]["train"] + data["pairs"]["eval"] == JUDGED, data
    assert "none on its way" in describe_data(data)


def test_feedback_still_on_its_way_when_the_wait_ends_is_recorded_with_the_run(store, broker, settings, tmp_path):
    """No worker at all: the run waits its bound, then goes on and says what it could not train on."""
    sessions = db.session_factory(db.make_engine(store.database_url))
    producer = _judge(settings, sessions)
    try:
        late = wait_until_stored(broker.url, timeout_seconds=2)
    finally:
        producer.close()
    assert not late.empty and late.queued_batches >= 1 and late.outbox_events == JUDGED, late
    snapshot = build_snapshot(tmp_path / "snapshot", TrainConfig(), SEED_DIR, sessions, in_flight=asdict(late))
    line = describe_data(snapshot.clinician_data())
    assert line.startswith("0 pairs (+0 held out)") and f"{JUDGED} events" in line and "still on their way" in line


def test_doctor_says_storing_is_behind_when_an_event_waits_over_a_minute(store, broker, settings, monkeypatch):
    """Issue 29, 7: judgments were stored 15 minutes late while `careloop doctor` and `up --status` showed
    all green. An event on its way for over a minute (or a backed-up feedback queue) now fails the check."""
    from cli.doctor import feedback_delivery
    from feedback import in_flight as module

    sessions = db.session_factory(db.make_engine(store.database_url))
    assert feedback_delivery(settings) == "everything submitted is stored"
    producer = _judge(settings, sessions)  # no worker: they wait
    try:
        assert "6 events in outboxes" in feedback_delivery(settings), "on their way, not late yet"
        monkeypatch.setattr(module, "LATE_SECONDS", 0.5)  # a minute, shortened: the rule, not the clock
        wait_for(lambda: module.in_flight(redis.Redis.from_url(broker.url)).behind, timeout=10,
                 message="the oldest event older than the limit")
        with pytest.raises(RuntimeError, match="storing is behind: 6 events in outboxes .oldest"):
            feedback_delivery(settings)
    finally:
        producer.close()


def test_a_run_trains_on_the_judgments_sent_before_it_started_not_those_sent_during_it(store, broker, settings,
                                                                                         tmp_path):
    """The ward bench found a run trained on 28 pairs when 24 judgments had been sent before the admin
    pressed Start: 4 were sent while its snapshot was being taken. Judgments carry the time Submit was
    pressed, and the snapshot takes those sent before the run started, however late they were stored."""
    from careloop.db import utcnow

    sessions = db.session_factory(db.make_engine(store.database_url))
    worker = start_worker(tmp_path / "worker", store.database_url, broker.url)
    try:
        producer = _judge(settings, sessions, reported=False)
        started = utcnow()  # the run starts here
        late = _judge(settings, sessions, tag="eczema", reported=False)  # sent after the start
        client = redis.Redis.from_url(broker.url)
        time.sleep(1)  # both outboxes have reported what they hold
        wait_for(lambda: in_flight(client).empty, timeout=60, message="every judgment stored")
        client.close()
        producer.close()
        late.close()
    finally:
        worker.kill()
    snapshot = build_snapshot(tmp_path / "snapshot", TrainConfig(), SEED_DIR, sessions, until=started)
    data = snapshot.clinician_data()
    assert data["pairs"]["train"] + data["pairs"]["eval"] == JUDGED, data
    everything = build_snapshot(tmp_path / "everything", TrainConfig(), SEED_DIR, sessions).clinician_data()
    assert everything["pairs"]["train"] + everything["pairs"]["eval"] == 2 * JUDGED, "all were stored"
