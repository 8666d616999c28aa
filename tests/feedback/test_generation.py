"""Filling the review queue through a real worker, which asks a real server for the answers."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from processes import start_worker, wait_for
from support import label

from adapters.registry import open_registry
from adapters.rollout import open_client
from feedback import schemas
from feedback.generation import fill_review_queue
from feedback.producer import FeedbackProducer
from feedback.store import ReviewItem, store_event


def _on(settings, server, tiny_model_dir, **overrides):
    """``settings`` talking to the test's serving of the tiny model, with ``overrides``."""
    return settings.model_copy(update={"serving_url": server.url, "control_token": server.token,
                                       "base_model": str(tiny_model_dir), **overrides})


def test_student_and_seed_questions_get_two_answers_and_some_items_are_gold(
        tmp_path, store, broker, server, tiny_model_dir, settings, library_index_dir):
    serving = {"serving_url": server.url, "control_token": server.token, "base_model": str(tiny_model_dir),
               "review_gold_fraction": "0.25", "answer_max_tokens": "12", "review_labels_needed": "3",
               # grounded in the library, within the tiny model's 512-token context
               "library_index_dir": str(library_index_dir), "retrieval_top_k": "2", "retrieval_passage_chars": "150",
               # The default hour, not the tests' 10 s: the first fill loads the PostgreSQL library (15 s
               # on a busy machine) and, redelivered, filled a fifth item before the candidate was loaded.
               "celery_visibility_timeout": "3600"}
    worker = start_worker(tmp_path / "worker", store.database_url, broker.url, queues="generation", **serving)
    try:
        from careloop.db import make_engine, session_factory

        sessions = session_factory(make_engine(store.database_url))
        conversation = uuid.uuid4()
        questions = ["Why is my ankle swollen, email me at a@b.org", "Is 38.5 C a fever in adults?"]
        for text in questions:
            store_event(sessions, schemas.MessageEvent(conversation_id=conversation, user="s", role="user",
                                                       content=text))
        api = FeedbackProducer(settings)
        api.celery.send_task("generation.fill_review_queue", args=(4,), queue="generation")
        wait_for(lambda: store.count(ReviewItem) == 4, timeout=120, message="4 review items")
        items = store.rows(ReviewItem)
        student = [i for i in items if i.prompt_origin == "student"]
        assert sorted(i.prompt for i in student) == sorted(["Why is my ankle swollen, email me at [EMAIL]",
                                                             "Is 38.5 C a fever in adults?"])
        assert all(i.version_a == i.version_b == "careloop-demo-tiny" and i.labels_needed == 3 for i in student)
        assert any(i.response_a != i.response_b for i in student)  # two samples, two seeds
        fever = next(i for i in student if "fever" in i.prompt)
        assert fever.passages and all(s["title"] and s["text"] for s in fever.passages), \
            "both answers were written from library passages, kept for reviewers"
        gold = [i for i in items if i.is_gold]
        assert len(gold) == 1 and gold[0].gold_choice in ("a", "b") and gold[0].passages is None
        assert len([i for i in items if i.prompt_origin == "seed" and not i.is_gold]) == 1

        # With a candidate loaded in serving, clinicians compare it with the live version.
        full = _on(settings, server, tiny_model_dir)
        open_registry(full).register("gen-v0001", server.adapter_dir / "med-v0001", actor="trainer")
        open_client(full).load_adapter("gen-v0001", str(server.adapter_dir / "med-v0001"))
        store_event(sessions, schemas.MessageEvent(conversation_id=conversation, user="s", role="user",
                                           content="What is a normal resting heart rate?"))
        api.celery.send_task("generation.fill_review_queue", args=(1,), queue="generation")
        wait_for(lambda: store.count(ReviewItem) == 5, timeout=120, message="the fifth item")
        newest = store.rows(ReviewItem)[-1]
        assert (newest.version_a, newest.version_b) == ("careloop-demo-tiny", "gen-v0001")
        server.unload("gen-v0001")
    finally:
        worker.process.terminate()
        worker.process.wait(30)


def test_beat_fills_the_queue_on_schedule(tmp_path, store, broker, server, tiny_model_dir, library_index_dir):
    """Beat asks for a fill every CARELOOP_REVIEW_FILL_INTERVAL_SECONDS (2 s here): never sooner, and
    not skipping beats; each fill reaches the worker and adds its batch."""
    import subprocess
    import sys
    from datetime import datetime
    from itertools import pairwise

    interval = 2.0
    serving = {"serving_url": server.url, "control_token": server.token, "base_model": str(tiny_model_dir),
               "answer_max_tokens": "8", "review_batch_size": "2", "review_gold_fraction": "0",
               "review_fill_interval_seconds": str(interval), "library_index_dir": str(library_index_dir),
               # the schedule is what is checked: the shared bm25s index, not a PostgreSQL load of its own
               "retrieval_top_k": "2", "retrieval_passage_chars": "150", "retrieval_backend": "bm25s"}
    worker = start_worker(tmp_path / "worker", store.database_url, broker.url, queues="generation", **serving)
    env = {**worker.env, "CARELOOP_HOME": str(tmp_path / "beat")}
    log = tmp_path / "beat.log"
    beat = subprocess.Popen([sys.executable, "-m", "cli", "beat"], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)

    def moments(event: str) -> list[datetime]:
        return [datetime.fromisoformat(line.split("timestamp='")[1].split("'")[0])
                for line in log.read_text().splitlines() if event in line and "timestamp='" in line]

    sent = "Sending due task fill-review-queue (generation.fill_review_queue)"
    try:
        wait_for(lambda: len(moments(sent)) >= 4 and store.count(ReviewItem) >= 4, timeout=120,
                 message=f"four scheduled fills and two batches of 2 items; beat log:\n"
                         f"{log.read_text()[-2000:] if log.exists() else ''}")
    finally:
        for process in (beat, worker.process):
            process.terminate()
            process.wait(30)
    (started,) = moments("beat: Starting...")
    times = [started, *moments(sent)]
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(times)]
    # Celery beat sends a task once its interval has passed since the last send (or the start).
    assert min(gaps) >= interval - 0.05, f"a fill came sooner than every {interval} s: {gaps}"
    assert sum(gaps) / len(gaps) <= 2 * interval, f"fills came far more rarely than every {interval} s: {gaps}"
    assert any((tmp_path / "beat").glob("celerybeat-schedule*")), "beat keeps its schedule's state in its home"


def test_the_queue_is_topped_up_to_its_target_and_no_further(store, server, tiny_model_dir, settings):
    from careloop.db import make_engine, session_factory
    from feedback.generation import FillResult, fill_review_queue

    sessions = session_factory(make_engine(store.database_url))
    full = _on(settings, server, tiny_model_dir, review_queue_target=3, review_gold_fraction=0.0, answer_max_tokens=4)
    client = open_client(full)
    assert fill_review_queue(full, sessions, client, 5).seed == 3
    assert fill_review_queue(full, sessions, client, 5) == FillResult(0, 0, 0, 0)  # three wait: nothing to do
    first = store.rows(ReviewItem)[0].id
    label(sessions, first, "nurse.a", "a")
    label(sessions, first, "nurse.b", "a")  # the first item has its two labels
    assert fill_review_queue(full, sessions, client, 5).seed == 1
    client.close()


def test_no_item_with_an_empty_answer_reaches_the_queue(store, server, tiny_model_dir, settings):
    """One-token answers are often empty (the model stops at once; with this seed, 3 of the first 15
    questions): a nurse cannot judge those, so they never become review items."""
    from careloop.db import make_engine, session_factory

    # Sampled as review answers were before they were decoded as the chat's (temperature 0.8): at the
    # default 0.3, one-token answers are nearly always the same token, and identical pairs are skipped too.
    full = _on(settings, server, tiny_model_dir, answer_max_tokens=1, review_gold_fraction=0.0,
               decoding_temperature=0.8, decoding_top_p=1.0, decoding_repetition_penalty=1.0)
    sessions = session_factory(make_engine(store.database_url))
    client = open_client(full)
    try:
        result = fill_review_queue(full, sessions, client, 12, rng=random.Random(0))
    finally:
        client.close()
    assert result.skipped >= 1, "this seed gives some empty answers: the test must exercise the skip"
    items = store.rows(ReviewItem)
    assert len(items) == result.seed + result.student == 12, "other questions were answered instead"
    assert all(item.response_a.strip() and item.response_b.strip() for item in items)


def test_a_question_asked_twice_is_queued_once(store, server, tiny_model_dir, settings):
    """Issue 19, 9: the same question asked twice by a student made two items in a row."""
    from careloop.db import make_engine, session_factory

    sessions = session_factory(make_engine(store.database_url))
    for text in ("What is gout?", "What is asthma?", "What is asthma?"):  # three conversations
        store_event(sessions, schemas.MessageEvent(conversation_id=uuid.uuid4(), user="s", role="user", content=text))
    full = _on(settings, server, tiny_model_dir, review_gold_fraction=0.0, answer_max_tokens=4)
    client = open_client(full)
    try:
        assert fill_review_queue(full, sessions, client, 3).student == 2
        store_event(sessions, schemas.MessageEvent(conversation_id=uuid.uuid4(), user="t", role="user",
                                              content="What is gout?"))  # asked again later
        assert fill_review_queue(full, sessions, client, 3).student == 0
    finally:
        client.close()
    prompts = [item.prompt for item in store.rows(ReviewItem) if item.prompt_origin == "student"]
    assert sorted(prompts) == ["What is asthma?", "What is gout?"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_queue_fills_as_beat_starts_and_soon_after_a_question(tmp_path, store, broker, server, tiny_model_dir,
                                                                  settings):
    """Issue 19, 8: the queue stayed empty for beat's first interval (5 minutes) after start-up,
    though students had asked. Beat fills it as it starts, and a student's question reaches it within
    CARELOOP_REVIEW_FILL_SOON_SECONDS, not at the next interval (10 minutes here); the review page
    learns when the next periodic fill is due."""
    import subprocess
    import sys

    from careloop.db import utcnow
    from feedback import review_queue

    interval = 600.0
    serving = {"serving_url": server.url, "control_token": server.token, "base_model": str(tiny_model_dir),
               "answer_max_tokens": "8", "review_batch_size": "2", "review_gold_fraction": "0",
               "review_fill_interval_seconds": str(interval), "review_fill_soon_seconds": "1"}
    worker = start_worker(tmp_path / "worker", store.database_url, broker.url, queues="feedback,generation", **serving)
    beat = subprocess.Popen([sys.executable, "-m", "cli", "beat"],
                            env={**worker.env, "CARELOOP_HOME": str(tmp_path / "b")},
                            stdout=(tmp_path / "beat.log").open("w"), stderr=subprocess.STDOUT)
    try:
        # The fill notes itself in Redis just after its items are stored: wait for both.
        wait_for(lambda: store.count(ReviewItem) >= 2 and review_queue.fills(broker.url, interval).last is not None,
                 timeout=90, message="the fill sent as beat started, and its note")
        fills = review_queue.fills(broker.url, interval)
        assert fills.last is not None and 0 < (fills.next_scheduled - utcnow()).total_seconds() <= interval
        api = FeedbackProducer(settings)
        question = "Why does my knee click when I climb stairs?"
        api.log_turn(event_id=uuid.uuid4(), conversation_id=uuid.uuid4(), user="stu", role="user", content=question)
        wait_for(lambda: any(item.prompt == question for item in store.rows(ReviewItem)), timeout=60,
                 message="the student's question in the queue")
        api.close()
    finally:
        for process in (beat, worker.process):
            process.terminate()
            process.wait(30)
    assert "Sending due task" not in (tmp_path / "beat.log").read_text(), "no periodic fill was due yet"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_questions_asked_while_a_fill_waits_send_no_second_fill(tmp_path, store, broker, server, tiny_model_dir,
                                                                settings):
    """Issue 29: each CARELOOP_REVIEW_FILL_SOON_SECONDS window with a new question sent a fill, and behind
    fills of minutes each on the real model 99 piled up in the generation queue. One waits at a time
    (it finds every question stored before it starts); once it has started, the next question sends one."""
    import time

    import redis

    from feedback.store import Message

    soon = {"review_fill_soon_seconds": "1", "answer_max_tokens": "4", "review_gold_fraction": "0",
            "retrieval_enabled": "false"}  # the library's passages overfill the tiny model's 512 tokens
    ingest = start_worker(tmp_path / "ingest", store.database_url, broker.url, queues="feedback", **soon)
    api = FeedbackProducer(settings)
    queue = redis.Redis.from_url(broker.url)
    generation = None
    try:
        for number in range(4):  # each past the last one's 1 s window: before, each sent a fill
            api.log_turn(event_id=uuid.uuid4(), conversation_id=uuid.uuid4(), user="stu", role="user",
                         content=f"What is question {number} about?")
            wait_for(lambda n=number: store.count(Message) == n + 1, timeout=30, message="the question stored")
            time.sleep(1.5)
        assert queue.llen("generation") == 1, "one fill waits for all four questions"
        generation = start_worker(tmp_path / "generation", store.database_url, broker.url, queues="generation",
                                  serving_url=server.url, control_token=server.token,
                                  base_model=str(tiny_model_dir), **soon)
        asked = {f"What is question {number} about?" for number in range(4)}
        wait_for(lambda: asked <= {item.prompt for item in store.rows(ReviewItem)}, timeout=90,
                 message="the one waiting fill run, with all four questions")
        api.log_turn(event_id=uuid.uuid4(), conversation_id=uuid.uuid4(), user="stu", role="user",
                     content="Why do my ankles swell in the evening?")
        wait_for(lambda: any(item.prompt.startswith("Why do my ankles") for item in store.rows(ReviewItem)),
                 timeout=90, message="a fill sent for the question asked after the last one started")
    finally:
        api.close()
        for worker in filter(None, (ingest, generation)):
            worker.kill()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_seed_questions_for_review_are_ones_a_nurse_can_judge(store, server, tiny_model_dir, settings):
    """Issue 29, 8: nurses were given PubMedQA's research abstracts with a yes/no/maybe question to judge
    answers to; those stay in training and evaluation, and review gets the seed's patient questions."""
    from careloop.db import make_engine, session_factory

    sessions = session_factory(make_engine(store.database_url))
    full = _on(settings, server, tiny_model_dir, review_gold_fraction=0.0, answer_max_tokens=4)
    client = open_client(full)
    try:
        assert fill_review_queue(full, sessions, client, 4).seed == 4
    finally:
        client.close()
    prompts = [item.prompt for item in store.rows(ReviewItem)]
    assert len(prompts) == 4 and not [p for p in prompts if "abstract" in p.lower()], prompts


def test_review_answers_are_decoded_as_the_chat_and_two_identical_answers_make_no_item(
        store, server, tiny_model_dir, settings):
    """Review answers use the chat's decoding (the settings'): greedy, one model gives the same answer
    twice, and a nurse gets no item with nothing to choose between. The fill sees it before asking
    serving for anything (CI: it asked for two answers to each of 2,313 seed questions, 5 minutes);
    a fill whose answers keep coming out empty or identical gives up after a few per item it wanted."""
    from structlog.testing import capture_logs

    from careloop.db import make_engine, session_factory
    from feedback.generation import MAX_SKIPPED_PER_ITEM, FillResult, fill_review_queue

    full = _on(settings, server, tiny_model_dir, decoding_temperature=0, answer_max_tokens=8, review_gold_fraction=0.0)
    sessions = session_factory(make_engine(store.database_url))
    client = open_client(full)
    try:
        with capture_logs() as logs:
            assert fill_review_queue(full, sessions, client, 3, rng=random.Random(0)) == FillResult(0, 0, 0, 0)
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["review_fill_needs_two_answers"]
        # Sampled, but one token long: the two answers are mostly the same word, or nothing.
        sampled = full.model_copy(update={"decoding_temperature": 0.01, "answer_max_tokens": 1})
        with capture_logs() as logs:
            result = fill_review_queue(sampled, sessions, client, 3, rng=random.Random(0))
    finally:
        client.close()
    fruitless = [e for e in logs if e["event"] == "review_pair_skipped"]
    assert len(fruitless) <= MAX_SKIPPED_PER_ITEM * 3 + 2, "the last wave may finish past the bound, no more"
    assert store.count(ReviewItem) == result.seed + result.student


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_fill_behind_students_waits_for_its_answers_instead_of_giving_up(tmp_path, store, broker, server,
                                                                           tiny_model_dir, settings):
    """Issue 29: the fill's answers are admitted after students' (a lower priority), and on the ward
    (four students, a run) they waited past CARELOOP_SERVING_TIMEOUT, so every fill gave up with
    nothing. A fill waits CARELOOP_REVIEW_ANSWER_TIMEOUT_SECONDS for each answer: here serving's
    timeout is 0.5 s and students fill every row of the batch for seconds."""
    import threading

    import httpx

    from careloop.db import make_engine, session_factory

    worker = start_worker(tmp_path / "generation", store.database_url, broker.url, queues="generation",
                          serving_url=server.url, control_token=server.token, base_model=str(tiny_model_dir),
                          serving_timeout="0.5", review_answer_timeout_seconds="120", answer_max_tokens="8",
                          review_gold_fraction="0", review_fill_concurrency="1", retrieval_enabled="false",
                          celery_visibility_timeout="3600")
    sessions = session_factory(make_engine(store.database_url))
    question = f"Why does my knee click ({uuid.uuid4().hex[:6]})?"
    store_event(sessions, schemas.MessageEvent(conversation_id=uuid.uuid4(), user="s", role="user", content=question))
    busy_until = time.monotonic() + 6

    def student(number: int) -> None:  # the batch's every row, again and again, for 6 s
        while time.monotonic() < busy_until:
            httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                "model": "careloop-demo-tiny", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Student {number}: what is asthma?"}]})

    students = [threading.Thread(target=student, args=(n,)) for n in range(8)]  # CARELOOP_MAX_BATCH
    for thread in students:
        thread.start()
    api = FeedbackProducer(settings)
    try:
        time.sleep(0.5)
        api.celery.send_task("generation.fill_review_queue", args=(1,), queue="generation")
        wait_for(lambda: question in {item.prompt for item in store.rows(ReviewItem)}, timeout=120,
                 message="the student's question answered twice behind the students")
    finally:
        api.close()
        for thread in students:
            thread.join()
        worker.kill()
    assert "review_fill_waiting_for_serving" not in worker.log.read_text(), "an answer timed out"
