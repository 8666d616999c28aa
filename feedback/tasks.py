"""Celery tasks of the `feedback` queue: validate, scrub and store each event exactly once."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import make_engine, session_factory
from careloop.log import get_logger
from careloop.settings import get_settings
from feedback import schemas
from feedback.celery_app import app
from feedback.store import store_dead_letter, store_event

log = get_logger(__name__)


@lru_cache(maxsize=1)
def _sessions() -> sessionmaker[Session]:
    return session_factory(make_engine(get_settings().resolved_database_url))


@app.task(name="feedback.ingest", bind=True, acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(OperationalError,), retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
          max_retries=None)
def ingest(self, kind: str, payload: dict) -> str:  # noqa: ANN001 - Celery's bound task
    """Store one event. Invalid: a dead letter with the reason. Database down: retried with backoff."""
    try:
        event = schemas.parse_event(kind, payload)
    except schemas.InvalidFeedback as exc:
        store_dead_letter(_sessions(), kind, payload, str(exc))
        log.warning("feedback_dead_letter", kind=kind, reason=str(exc)[:200])
        return "dead_letter"
    stored = store_event(_sessions(), event)
    log.info("feedback_stored" if stored else "feedback_duplicate_ignored", kind=kind, event_id=str(event.event_id))
    return "stored" if stored else "duplicate"


@app.task(name="generation.fill_review_queue", acks_late=True, reject_on_worker_lost=True)
def fill_review_queue(count: int | None = None) -> dict:
    """Add review items: student and seed questions answered twice by serving, plus gold items."""
    from feedback.generation import fill_review_queue as fill
    from serving.client import ServingClient

    settings = get_settings()
    client = ServingClient.from_settings(settings)
    try:
        result = fill(settings, _sessions(), client, count or settings.review_batch_size)
    finally:
        client.close()
    log.info("review_queue_filled", **asdict(result))
    return asdict(result)
