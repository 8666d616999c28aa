"""The Celery app: Redis broker, queues `feedback`, `generation`, `training`, settings for no loss.

No import-time side effects beyond building the app object: ``configure(settings)`` points it at
the configured Redis (the worker CLI calls it); publishers use ``producer(settings)``.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from careloop.settings import Settings

QUEUES = ("feedback", "generation", "training")

# Task modules by name: the worker imports them; this module imports none of them.
app = Celery("careloop", include=["feedback.tasks", "trainer.tasks"])


def configure(settings: Settings) -> Celery:
    """Point the worker's app (the one the tasks are registered on) at the configured Redis."""
    app.conf.update(_config(settings))
    return app


def producer(settings: Settings) -> Celery:
    """A separate app for publishing by task name: each settings object gets its own broker
    connections (an app caches its connection pool on first use)."""
    publisher = Celery("careloop-producer")
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
        task_routes={"feedback.*": {"queue": "feedback"}, "generation.*": {"queue": "generation"},
                     "training.*": {"queue": "training"}},
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
        beat_schedule={
            "fill-review-queue": {"task": "generation.fill_review_queue",
                                  "schedule": settings.review_fill_interval_seconds,
                                  "options": {"queue": "generation", "expires": settings.review_fill_interval_seconds}},
            "check-training": {"task": "training.check", "schedule": settings.train_check_interval_seconds,
                               "options": {"queue": "training", "expires": settings.train_check_interval_seconds}},
        },
    )
