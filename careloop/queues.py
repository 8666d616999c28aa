"""The platform's Celery app: Redis broker, queues `feedback`, `generation`, `training`, settings for no loss.

It lives in the foundation because all three queues share it and no domain owns the others' work.
Task modules register on it with ``@shared_task`` and export their task names; this module names
none of them. No import-time side effects beyond building the app object: ``configure(settings)``
points it at the configured Redis (the worker and beat commands call it, naming the task modules
and the periodic jobs); publishers use ``producer(settings)``. There is no result backend: task
results that matter are written to the database by the tasks themselves.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Queue

from careloop.settings import Settings

QUEUES = ("feedback", "generation", "training")
# `careloop beat` says it is alive here (who, when) every BEAT_HEARTBEAT_SECONDS; the key lapses
# after three missed beats, so `careloop doctor` can tell a running beat from a stopped one, on any host.
BEAT_HEARTBEAT_KEY = "careloop:beat-heartbeat"
BEAT_HEARTBEAT_SECONDS = 15

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


def keep_beat_heartbeat(settings: Settings) -> threading.Thread:
    """Write beat's heartbeat until the process ends (a daemon thread); a Redis that is away is
    retried at the next beat, never an error: beat itself reconnects on its own."""
    import redis

    def beat() -> None:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        who = {"host": socket.gethostname(), "pid": os.getpid()}
        while True:
            try:
                client.set(BEAT_HEARTBEAT_KEY, json.dumps({**who, "at": time.time()}), ex=3 * BEAT_HEARTBEAT_SECONDS)
            except redis.RedisError:
                pass
            time.sleep(BEAT_HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name="careloop-beat-heartbeat", daemon=True)
    thread.start()
    return thread


def beat_heartbeat(redis_url: str) -> dict[str, Any] | None:
    """Beat's last heartbeat ({host, pid, at}), or None when no beat has beaten lately."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        raw = client.get(BEAT_HEARTBEAT_KEY)
    finally:
        client.close()
    return json.loads(raw) if raw else None
