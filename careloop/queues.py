"""The platform's Celery app: Redis broker, queues `feedback`, `generation`, `training`, settings for no loss.

It lives in the foundation because all three queues share it and no domain owns the others' work.
Task modules register on it with ``@shared_task`` and export their task names; this module names
none of them. No import-time side effects beyond building the app object: ``configure(settings)``
points it at the configured Redis (the worker and beat commands call it, naming the task modules
and the periodic jobs); publishers use ``producer(settings)``. There is no result backend: task
results that matter are written to the database by the tasks themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Queue

from careloop.settings import Settings

QUEUES = ("feedback", "generation", "training")

app = Celery("careloop")


def configure(settings: Settings, *, include: Sequence[str] = (),
              beat_schedule: dict[str, dict[str, Any]] | None = None) -> Celery:
    """Point the worker's app (the one the tasks are registered on) at the configured Redis.
    ``include``: the task modules a worker imports; ``beat_schedule``: the periodic jobs beat sends."""
    app.conf.update(_config(settings), include=list(include), beat_schedule=beat_schedule or {})
    return app


def producer(settings: Settings) -> Celery:
    """A separate app for publishing by task name: each settings object gets its own broker
    connections (an app caches its connection pool on first use). Never the current app, so the
    tasks a worker runs keep resolving to the worker's own app."""
    publisher = Celery("careloop-producer", set_as_current=False)
    publisher.conf.update(_config(settings))
    return publisher


def _config(settings: Settings) -> dict:
    return dict(
        broker_url=settings.redis_url,
        result_backend=None,  # results live in the database, not in Redis
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="feedback",
        task_routes={f"{name}.*": {"queue": name} for name in QUEUES},
        # No loss: a task is acknowledged only after it ran, and comes back if its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout,
            # How often kombu looks for unacked tasks of dead workers: every interval (throttle 1),
            # so a dead worker's task is back within visibility_timeout + interval.
            "unacked_restore_interval": max(1, min(30, settings.celery_visibility_timeout // 2)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2, "socket_timeout": 5,
            # Publishing fails at once when Redis is down, so the API can fall back to its outbox.
            "max_retries": 0,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
