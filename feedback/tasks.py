"""Celery tasks of the `feedback` and `generation` queues: validate, scrub and store each event
exactly once; fill the review queue. Publishers send them by the names below."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING

import redis
from celery import Task, shared_task
from celery.signals import beat_init, worker_process_init
from celery.utils.time import maybe_iso8601
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import sessions_for
from careloop.log import get_logger
from careloop.settings import Settings, get_settings
from feedback import review_queue, schemas
from feedback.store import store_batch

if TYPE_CHECKING:
    from serving.client import ServingUnavailable

log = get_logger(__name__)

INGEST_BATCH = "feedback.ingest_batch"
INGEST = "feedback.ingest"
FILL_REVIEW_QUEUE = "generation.fill_review_queue"
# A fill that finds serving away (starting, loading its model) tries again after 1, 2, 4, 8, 10, 10... s:
# the pause's cap is how late the fill may run once serving answers. It gives up when it expires (the
# next periodic fill takes over) or after SERVING_WAIT_SECONDS.
SERVING_RETRY_MAX_SECONDS = 10.0
SERVING_WAIT_SECONDS = 600.0


def _sessions() -> sessionmaker[Session]:
    return sessions_for(get_settings().resolved_database_url)


@worker_process_init.connect(weak=False)
def _load_name_recogniser(**_: object) -> None:
    """Load the scrubber's name recogniser as the worker process starts, not inside its first task;
    before any task runs, so a task's imports (a training run's torch) never meet the load half done."""
    from feedback.deidentify import warm_up

    warm_up()


INGEST_OPTIONS = dict(acks_late=True, reject_on_worker_lost=True, autoretry_for=(OperationalError,),
                      retry_backoff=2, retry_backoff_max=300, retry_jitter=True, max_retries=None)


@shared_task(name=INGEST_BATCH, **INGEST_OPTIONS)
def ingest_batch(events: list) -> dict:
    """Store a batch of ``(kind, payload)`` events in one transaction: valid ones once each, invalid
    ones as dead letters with the reason. A database that cannot be reached retries the whole batch
    with backoff; an event whose data it refuses becomes a dead letter, the others are stored."""
    valid, dead = [], []
    for kind, payload in events:
        try:
            valid.append(schemas.parse_event(kind, payload))
        except schemas.InvalidFeedback as exc:
            dead.append((kind, payload, str(exc)))
            log.warning("feedback_dead_letter", kind=kind, reason=str(exc)[:200])
    stored, dead_letters = store_batch(_sessions(), valid, dead)
    refused = dead_letters - len(dead)  # valid events whose data the database refused
    if refused:
        log.warning("feedback_dead_letter", refused_by_database=refused)
    log.info("feedback_batch_stored", events=len(events), stored=stored, duplicates=len(valid) - refused - stored,
             dead_letters=dead_letters)
    if stored and any(isinstance(event, schemas.MessageEvent) and event.role == "user" for event in valid):
        _fill_soon(get_settings())
    return {"stored": stored, "duplicates": len(valid) - refused - stored, "dead_letters": dead_letters}


@shared_task(name=INGEST, **INGEST_OPTIONS)
def ingest(kind: str, payload: dict) -> dict:
    """One event (other producers, and the benchmark's one-task-per-event baseline)."""
    return ingest_batch([(kind, payload)])


def _fill_soon(settings: Settings) -> None:
    """New student questions were stored: fill the review queue in ``review_fill_soon_seconds`` rather
    than at beat's next interval, minutes away; one such fill waits at a time, however many questions
    arrive. Ingest never fails for it: without Redis the periodic fill still comes."""
    # A task held longer than the visibility timeout would be handed out again by Redis: wait less.
    delay = min(settings.review_fill_soon_seconds, settings.celery_visibility_timeout / 2)
    if delay <= 0:
        return
    expires = delay + settings.review_fill_interval_seconds
    try:
        if review_queue.fill_soon(settings.redis_url, expires):
            fill_review_queue.apply_async(queue="generation", countdown=delay, expires=expires,
                                          kwargs={"soon": True})
    except (redis.RedisError, OSError) as exc:
        log.warning("review_fill_not_sent", reason=exc.__class__.__name__)


@shared_task(name=FILL_REVIEW_QUEUE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def fill_review_queue(self: Task, count: int | None = None, scheduled: bool = False, soon: bool = False) -> dict:
    """Add review items: student and seed questions answered twice by serving, plus gold items.
    ``scheduled``: beat's periodic fill (or the one at its start), whose time the review page uses
    to say when the next is due; ``soon``: the fill sent for new student questions."""
    from adapters.rollout import open_client
    from feedback.generation import fill_review_queue as fill
    from serving.client import ServingUnavailable

    settings = get_settings()
    if soon and not self.request.retries:
        try:
            review_queue.fill_started(settings.redis_url)
        except redis.RedisError as exc:  # the mark expires by itself
            log.warning("review_fill_start_not_recorded", reason=exc.__class__.__name__)
    client = open_client(settings, timeout=settings.review_answer_timeout_seconds)
    try:
        result = fill(settings, _sessions(), client, count or settings.review_batch_size, retriever=_retriever())
    except ServingUnavailable as exc:
        return _wait_for_serving(self, settings, exc)
    finally:
        client.close()
    log.info("review_queue_filled", scheduled=scheduled, **asdict(result))
    try:
        review_queue.record_fill(settings.redis_url, scheduled)
    except redis.RedisError as exc:
        log.warning("review_fill_not_recorded", reason=exc.__class__.__name__)
    return asdict(result)


def _wait_for_serving(task: Task, settings: Settings, exc: ServingUnavailable) -> dict:
    """Serving does not answer yet: try the fill again with backoff, one log line per try, and give
    up with one warning when the fill expires or has waited SERVING_WAIT_SECONDS. Issue 29, 6: the
    fill sent as `careloop up` started met serving still loading its model and died with a traceback;
    the queue stayed empty until a student's question sent another, 5.5 minutes later. The pause is
    a retry's countdown, not a sleep: the worker runs other tasks meanwhile."""
    now = datetime.now(UTC)
    limit = now + timedelta(seconds=SERVING_WAIT_SECONDS)
    expires = maybe_iso8601(task.request.expires)
    deadline = expires.replace(tzinfo=expires.tzinfo or UTC) if expires else limit
    if not task.request.retries:  # the first try: the wait starts now, and its retries carry the deadline
        deadline = min(deadline, limit)
    # A task held unacknowledged past the visibility timeout would be handed out a second time.
    pause = min(2.0 ** task.request.retries, SERVING_RETRY_MAX_SECONDS, settings.celery_visibility_timeout / 2)
    reason = str(exc)[:300]
    if now + timedelta(seconds=pause) >= deadline:
        log.warning("review_fill_gave_up_waiting_for_serving", url=settings.serving_url,
                    tries=task.request.retries + 1, reason=reason)
        return {"serving_unavailable": reason}
    log.info("review_fill_waiting_for_serving", url=settings.serving_url, tries=task.request.retries + 1,
             retry_in_seconds=pause, reason=reason)
    raise task.retry(countdown=pause, expires=deadline)


@lru_cache(maxsize=1)
def _retriever():
    """The worker's library (its index loaded once per process), or None with retrieval off."""
    settings = get_settings()
    if not settings.retrieval_enabled:
        return None
    from library.index import Retriever

    return Retriever(settings, _sessions())


def schedule(settings: Settings) -> dict:
    """The periodic job of these queues, for beat: keep the review queue filled."""
    every = settings.review_fill_interval_seconds
    return {"fill-review-queue": {"task": FILL_REVIEW_QUEUE, "schedule": every, "kwargs": {"scheduled": True},
                                  "options": {"queue": "generation", "expires": every}}}


def fill_when_beat_starts(settings: Settings) -> None:
    """Beat's first periodic fill comes one interval after it starts (minutes with an empty queue
    after start-up, though students may have asked): send one as beat starts."""
    every = settings.review_fill_interval_seconds

    @beat_init.connect(weak=False)
    def fill_now(sender: object, **_: object) -> None:
        sender.app.send_task(FILL_REVIEW_QUEUE, kwargs={"scheduled": True}, queue="generation", expires=every)
        log.info("review_fill_sent_at_start")
