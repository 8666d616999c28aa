"""Feedback from the API through Redis and a real Celery worker into the store: once, scrubbed, validated."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing

import pytest
from processes import start_worker, wait_for

from careloop.redis_server import start_local_redis
from feedback import store as tables
from feedback.producer import FeedbackProducer, InvalidFeedback

SCORES = {"accuracy": 4, "helpfulness": 3, "relevance": 5, "comprehensiveness": 2}


def comparison(**overrides) -> dict:
    return {"annotator": "nurse.kim", "prompt": "What is the first-line treatment for hypertension?",
            "response_a": "Thiazide diuretics, ACE inhibitors, ARBs or calcium channel blockers.",
            "response_b": "Rest.", "version_a": "med-v0002", "version_b": "med-v0001", "shown_order": "ba",
            "choice": "a", "scores_a": SCORES, "scores_b": {**SCORES, "accuracy": 1}, "seconds_spent": 41.5,
            **overrides}


def test_every_event_kind_is_stored_once_and_scrubbed(settings, worker, store):
    api = FeedbackProducer(settings)
    conversation = uuid.uuid4()
    question = api.log_turn(conversation_id=conversation, user="student.lee", role="user",
                            content="My MRN is 44829173, what does 140/90 mean?")
    answer = api.log_turn(conversation_id=conversation, user="student.lee", role="assistant",
                          content="140/90 mmHg is stage 2 hypertension.", adapter_version="med-v0002",
                          demo_model=True, latency_ms=850, prompt_tokens=20, completion_tokens=9)
    api.submit_rating(message_id=answer, user="student.lee", thumbs="down", reason="incomplete",
                      comment="call me on 415-555-0132")
    api.submit_correction(message_id=answer, annotator="dr.osei", prompt="What does 140/90 mean?",
                          original="140/90 mmHg is stage 2 hypertension.",
                          corrected="140/90 mmHg is stage 2 hypertension (ACC/AHA 2017); confirm with repeat readings.")
    api.submit_comparison(**comparison(safety_flag=True, safety_category="wrong_dose",
                                       corrected_answer="Email me at kim@example.org"))
    wait_for(lambda: store.count(tables.Comparison) == 1 and store.count(tables.Correction) == 1
             and store.count(tables.Rating) == 1 and store.count(tables.Message) == 2, message="5 events stored")

    messages = store.rows(tables.Message)
    assert [m.event_id for m in messages] == [question, answer]
    assert messages[0].content == "My MRN is [ID], what does 140/90 mean?"  # the number gone, BP kept
    assert (messages[1].adapter_version, messages[1].demo_model, messages[1].latency_ms) == ("med-v0002", True, 850)
    assert store.rows(tables.Rating)[0].comment == "call me on [PHONE]"
    stored = store.rows(tables.Comparison)[0]
    assert (stored.choice, stored.shown_order, stored.scores_b["accuracy"], stored.safety_category) == (
        "a", "ba", 1, "wrong_dose")
    assert stored.corrected_answer == "Email me at [EMAIL]"


def test_a_replayed_event_is_stored_once(settings, worker, store):
    api = FeedbackProducer(settings)
    event_id = api.submit_comparison(**comparison())
    payload = {**comparison(), "event_id": str(event_id)}
    for _ in range(3):  # redeliveries and outbox resends look exactly like this
        api.celery.send_task("feedback.ingest", args=("comparison", payload), queue="feedback")
    later = api.submit_comparison(**comparison(choice="tie"))
    wait_for(lambda: [c.event_id for c in store.rows(tables.Comparison)] == [event_id, later]
             or store.count(tables.Comparison) > 2, message="both comparisons")
    time.sleep(0.5)
    assert [c.event_id for c in store.rows(tables.Comparison)] == [event_id, later]


INVALID = [
    ("comparison", comparison(choice="c"), "choice: Input should be 'a', 'b', 'tie' or 'both_bad'"),
    ("comparison", comparison(scores_a={**SCORES, "accuracy": 6}),
     "scores_a.accuracy: Input should be less than or equal to 5"),
    ("comparison", comparison(safety_flag=True), "safety_category is required when safety_flag is set"),
    ("comparison", comparison(prompt=""), "prompt: String should have at least 1 character"),
    ("rating", {"message_id": "not-a-uuid", "user": "u", "thumbs": "up"}, "message_id: Input should be a valid UUID"),
    ("rating", {"message_id": str(uuid.uuid4()), "user": "u", "thumbs": "sideways", "comment": "mail a@b.org"},
     "thumbs: Input should be 'up' or 'down'"),
    ("turn", {"conversation_id": str(uuid.uuid4()), "user": "u", "role": "user", "content": "x", "extra": 1},
     "extra: Extra inputs are not permitted"),
    ("vote", {"anything": 1}, "unknown event kind 'vote'"),
]


def test_invalid_events_are_refused_by_the_api_and_dead_lettered_by_the_worker(settings, worker, store):
    """Each kind of bad event, through one worker (a worker per case cost ~5 s each): the API refuses
    it with the reason; sent past the API, the worker keeps it as a dead letter with that reason."""
    api = FeedbackProducer(settings)
    for number, (kind, payload, reason) in enumerate(INVALID, start=1):
        submit = {"comparison": api.submit_comparison, "rating": api.submit_rating, "turn": api.log_turn}.get(kind)
        if submit is not None:
            with pytest.raises(InvalidFeedback, match=re.escape(reason)):
                submit(**payload)
        # An older or foreign producer that skips validation: the worker keeps the event with the reason.
        api.celery.send_task("feedback.ingest", args=(kind, payload), queue="feedback")
        wait_for(lambda n=number: store.count(tables.DeadLetter) == n, message=f"dead letter {number}: {reason}")
        letter = store.rows(tables.DeadLetter)[-1]
        assert reason in letter.reason and letter.kind == kind, (kind, reason, letter.reason)
        if "comment" in payload:
            assert letter.payload["comment"] == "mail [EMAIL]"  # dead letters are scrubbed too
    assert store.count(tables.Comparison) + store.count(tables.Rating) + store.count(tables.Message) == 0


def test_a_nul_in_a_students_message_loses_nobodys_feedback(settings, worker, store):
    """Issue 31, 1: a message with a NUL (PostgreSQL refuses it in text) sent in one batch with a
    nurse's judgment, as the bot's outbox sends them: both are stored, the message without the NUL."""
    question = {"event_id": str(uuid.uuid4()), "conversation_id": str(uuid.uuid4()), "user": "stu", "role": "user",
                "content": "nulcheck asthma \u0000 end"}
    judgment = {**comparison(), "event_id": str(uuid.uuid4())}
    api = FeedbackProducer(settings)
    api.celery.send_task("feedback.ingest_batch", args=([("turn", question), ("comparison", judgment)],),
                         queue="feedback")
    wait_for(lambda: store.count(tables.Comparison) + store.count(tables.Message) == 2, message="both stored")
    assert [m.content for m in store.rows(tables.Message)] == ["nulcheck asthma  end"]
    assert store.count(tables.DeadLetter) == 0


def test_a_judgment_is_stored_within_seconds_while_a_review_fill_holds_the_generation_worker(
        tmp_path, store, broker, settings):
    """Issue 29, 1: with `careloop up`'s workers (``cli.up.WORKERS``: one per queue), a nurse's judgment
    is stored while a review fill waits on serving; when ingest and generation shared one worker,
    judgments waited for whole fills (6-15 minutes on the default model)."""
    from cli.up import WORKERS

    with closing(socket.socket()) as silent:  # a serving that takes the connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        serving = {"serving_url": f"http://127.0.0.1:{silent.getsockname()[1]}", "serving_timeout": "300"}
        workers = {name: start_worker(tmp_path / name, store.database_url, broker.url, queues=queue, **serving)
                   for name, queue in WORKERS.items() if queue != "training"}
        api = FeedbackProducer(settings)
        try:
            api.celery.send_task("generation.fill_review_queue", args=(2,), queue="generation")
            wait_for(lambda: "generation.fill_review_queue" in workers["generation-worker"].log.read_text(),
                     message="the fill taken by the generation worker")
            started = time.monotonic()
            api.submit_comparison(**comparison())
            wait_for(lambda: store.count(tables.Comparison) == 1, timeout=20, message="the judgment stored")
            assert time.monotonic() - started < 10, "stored, but only after the fill"
            assert store.count(tables.ReviewItem) == 0, "the fill still waits on serving"
        finally:
            api.close()
            for worker in workers.values():
                worker.kill()


def test_events_sent_before_the_renames_of_migration_0012_are_stored_not_dead_lettered(settings, worker, store):
    """An outbox or queue that holds events from before the upgrade (``source_a`` / ``source_b`` for the
    versions that wrote the answers, ``sources`` for the passages an answer was given) is emptied into
    the store under today's names: a clinician's judgment in flight across an upgrade is not lost."""
    api = FeedbackProducer(settings)
    before = comparison()
    before["source_a"], before["source_b"] = before.pop("version_a"), before.pop("version_b")
    passage = {"number": 1, "doc_id": "medquad-1", "title": "Asthma", "text": "Inhalers help.", "score": 1.0}
    answer = {"event_id": str(uuid.uuid4()), "conversation_id": str(uuid.uuid4()), "user": "stu", "role": "assistant",
              "content": "Use your inhaler [1].", "sources": [passage]}
    api.celery.send_task("feedback.ingest", args=("comparison", before), queue="feedback")
    api.celery.send_task("feedback.ingest", args=("turn", answer), queue="feedback")
    wait_for(lambda: store.count(tables.Comparison) + store.count(tables.Message) == 2, message="both events stored")
    (judgment,) = store.rows(tables.Comparison)
    assert (judgment.version_a, judgment.version_b) == ("med-v0002", "med-v0001")
    (message,) = store.rows(tables.Message)
    assert message.passages == [{**passage, "publisher": "", "url": ""}]
    assert store.count(tables.DeadLetter) == 0


def test_events_wait_in_the_outbox_while_redis_is_down_and_arrive_once_in_order(settings, worker, store, broker):
    api = FeedbackProducer(settings, flush_interval=0.5)
    first = api.submit_comparison(**comparison(annotator="nurse.1"))
    wait_for(lambda: store.count(tables.Comparison) == 1, message="the first comparison")
    broker.stop()
    started = time.perf_counter()
    waiting = [api.submit_comparison(**comparison(annotator=f"nurse.{i}")) for i in range(2, 7)]
    assert time.perf_counter() - started < 2, "the API must not hang while Redis is down"
    assert len(api.outbox.unsent(100)) == 5
    time.sleep(1.5)  # the flusher tries and fails meanwhile; nothing is lost
    assert len(api.outbox.unsent(100)) == 5
    restarted = start_local_redis(broker.directory, port=broker.port)  # same data dir and port
    try:
        wait_for(lambda: store.count(tables.Comparison) == 6, timeout=60, message="the outbox delivered")
        assert [c.event_id for c in store.rows(tables.Comparison)] == [first, *waiting]
        wait_for(lambda: len(api.outbox) == 0, message="the outbox to see the events stored")
        time.sleep(1)
        assert store.count(tables.Comparison) == 6
    finally:
        restarted.stop()


def test_events_a_broker_accepted_and_then_lost_are_sent_again(settings, store, broker, tmp_path):
    """Redis takes the events, then loses them (killed before it wrote them down, or replaced by an
    empty one): the outbox still holds them until the store has them, and sends them again."""
    import redis
    from processes import start_worker

    api = FeedbackProducer(settings, flush_interval=0.1, resend_after=1.0)
    sent = [api.submit_rating(message_id=uuid.uuid4(), user="s", thumbs="up") for _ in range(3)]
    wait_for(lambda: api.outbox.unsent(10) == [], message="the events published")
    assert redis.Redis.from_url(broker.url).llen("feedback") >= 1  # in Redis, with no worker to take them
    broker.stop()
    shutil.rmtree(broker.directory)  # the broker comes back empty
    restarted = start_local_redis(broker.directory, port=broker.port)
    worker = start_worker(tmp_path / "worker", store.database_url, restarted.url)
    try:
        wait_for(lambda: store.count(tables.Rating) == 3, timeout=60, message="the lost events sent again")
        assert sorted(r.event_id for r in store.rows(tables.Rating)) == sorted(sent)
        wait_for(lambda: len(api.outbox) == 0, message="the outbox to see them stored")
    finally:
        worker.stop()
        restarted.stop()
        api.close()


# A bot process of its own: submits one rating and keeps running (its sender retrying) until killed.
WRITER = """
import sys, time, uuid
from careloop.settings import load_settings
from feedback.producer import FeedbackProducer
api = FeedbackProducer(load_settings(), flush_interval=float(sys.argv[1]))
if sys.argv[2] == "submit":
    print(api.submit_rating(message_id=uuid.uuid4(), user="s", thumbs="up"), flush=True)
else:
    print("sending", flush=True)
time.sleep(600)
"""


def _outbox_rows(path) -> int:
    import sqlite3

    with closing(sqlite3.connect(path)) as outbox:
        return outbox.execute("SELECT count(*) FROM outbox").fetchone()[0]


def test_the_outbox_survives_a_restart_of_the_process_that_wrote_it(settings, worker, store, broker):
    """The process that accepted a rating is SIGKILLed before its sender could deliver it (Redis is
    down); a new process on the same outbox delivers it, and it is stored exactly once."""
    import redis
    from processes import careloop_env

    env = careloop_env(settings.home, database_url=store.database_url, redis_url=broker.url)
    broker.stop()

    def start(mode: str) -> tuple[subprocess.Popen, str]:
        process = subprocess.Popen([sys.executable, "-c", WRITER, "0.2", mode], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        return process, process.stdout.readline().strip()

    first, written = start("submit")
    assert written, "the writing process printed the rating's id"
    first.kill()  # SIGKILL: no close(), no last flush
    first.wait(30)
    outbox = settings.home / "outbox.db"
    assert _outbox_rows(outbox) == 1, "the accepted rating waits in the outbox"
    assert store.count(tables.Rating) == 0

    restarted = start_local_redis(broker.directory, port=broker.port)
    second, said = start("send")
    try:
        assert said == "sending"
        wait_for(lambda: store.count(tables.Rating) == 1, timeout=60, message="the outboxed rating delivered")
        # Delivered and confirmed: the outbox is empty and nothing waits in Redis to be stored again.
        wait_for(lambda: _outbox_rows(outbox) == 0, timeout=30, message="the new process to see it stored")
        queued = redis.Redis.from_url(restarted.url)
        wait_for(lambda: queued.llen("feedback") == 0 and queued.hlen("unacked") == 0,
                 message="the broker to hold nothing more")
        queued.close()
        assert [str(r.event_id) for r in store.rows(tables.Rating)] == [written]
    finally:
        second.kill()
        second.wait(30)
        restarted.stop()


def test_killing_the_worker_mid_stream_loses_and_duplicates_nothing(tmp_path, settings, store, broker):
    from processes import start_worker

    worker = start_worker(tmp_path / "worker-1", store.database_url, broker.url)
    api = FeedbackProducer(settings, batch_size=50)
    conversation = uuid.uuid4()
    sent = [api.log_turn(conversation_id=conversation, user="student", role="user", content=f"question {i}")
            for i in range(2000)]
    wait_for(lambda: store.count(tables.Message) >= 100, message="the worker to start storing")
    worker.kill()
    stored_at_kill = store.count(tables.Message)
    assert stored_at_kill < 2000, "the worker finished before it could be killed; make the batches smaller"
    restarted = start_worker(tmp_path / "worker-2", store.database_url, broker.url)
    try:
        # The batch the dead worker held comes back after CARELOOP_CELERY_VISIBILITY_TIMEOUT (10 s here).
        wait_for(lambda: store.count(tables.Message) == 2000, timeout=120, message="all 2,000 events")
        # Events leave the outbox once the sender has seen them stored (it checks every 2 s).
        wait_for(lambda: len(api.outbox) == 0, timeout=30, message="the outbox to see every event stored")
        stored = store.rows(tables.Message)
        assert len(stored) == 2000 and {m.event_id for m in stored} == set(sent)
    finally:
        restarted.kill()


def test_events_kept_at_careloop_outbox_path_survive_a_bot_restart(settings, store, broker, tmp_path):
    """With CARELOOP_OUTBOX_PATH on a local disk (one per bot host), events submitted while Redis is
    down wait there, not in $CARELOOP_HOME, and a restarted bot sends them."""
    from processes import start_worker

    local = tmp_path / "local-disk" / "outbox.db"
    own = settings.model_copy(update={"outbox_path": local})
    broker.stop()
    api = FeedbackProducer(own, flush_interval=0.2)
    waiting = api.submit_comparison(**comparison(annotator="nurse.1"))
    api.close()
    assert local.exists() and not (settings.home / "outbox.db").exists()
    restarted = start_local_redis(broker.directory, port=broker.port)
    worker = start_worker(tmp_path / "worker", store.database_url, broker.url)
    again = FeedbackProducer(own, flush_interval=0.2)
    try:
        wait_for(lambda: store.count(tables.Comparison) == 1, timeout=60, message="the restarted bot sent it")
        assert [c.event_id for c in store.rows(tables.Comparison)] == [waiting]
    finally:
        again.close()
        worker.kill()
        restarted.stop()
