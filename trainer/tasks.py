"""Celery tasks of the `training` queue: the scheduled check and the run itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import shared_task
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import sessions_for, utcnow
from careloop.log import get_logger
from careloop.queues import producer
from careloop.settings import Settings, get_settings
from trainer.runs import TrainingRun
from trainer.schedule import Busy, is_due, lock_held, progress, training_lock

log = get_logger(__name__)

CHECK = "training.check"
RUN = "training.run"
# A run asked for by hand (the admin page) is marked here until its worker starts it: a second request
# meanwhile is refused instead of queueing a second full run. Both lapse together: a request not started
# within the hour (the stack was stopped) is dropped, not run at the next start-up.
REQUEST_KEY = "careloop:training-requested"
REQUEST_SECONDS = 3600


class RunRefused(Exception):
    """A run was asked for while one is queued or running; the message names it."""


@dataclass(frozen=True)
class RunRequest:
    actor: str
    requested_at: datetime


def requested_run(redis_url: str) -> RunRequest | None:
    """The run asked for by hand and not started yet, if any."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.get(REQUEST_KEY)
    finally:
        client.close()
    if raw is None:
        return None
    value = json.loads(raw)
    return RunRequest(value["actor"], datetime.fromisoformat(value["at"]))


def request_run(settings: Settings, sessions: sessionmaker[Session], actor: str) -> RunRequest:
    """Queue one training run for ``actor`` (recorded as the run's actor), unless a run is running or
    already queued: then RunRefused names it. Redis and broker errors propagate."""
    import redis

    if lock_held(settings.redis_url):
        with sessions() as session:
            running = session.scalar(select(TrainingRun).where(TrainingRun.status == "running")
                                     .order_by(TrainingRun.id.desc()).limit(1))
        if running is not None:
            now = progress(sessions, running)
            raise RunRefused(f"run {running.id} (started by {running.actor}) is running: {now.step_label}, "
                             f"{now.percent:.0f}%. Start another when it has finished.")
        raise RunRefused("a training run is starting. Start another when it has finished.")
    request = RunRequest(actor, utcnow())
    client = redis.Redis.from_url(settings.redis_url)
    try:
        if not client.set(REQUEST_KEY, json.dumps({"actor": actor, "at": request.requested_at.isoformat()}),
                          nx=True, ex=REQUEST_SECONDS):
            queued = requested_run(settings.redis_url)
            who = f" by {queued.actor} at {queued.requested_at:%H:%M} UTC" if queued else ""
            raise RunRefused(f"a training run requested{who} is already queued; the training worker starts it "
                             "when it is free.")
        try:
            producer(settings).send_task(RUN, kwargs={"config_path": str(settings.train_config) if settings.train_config
                                                      else None, "actor": actor},
                                         queue="training", expires=REQUEST_SECONDS, retry=False)
        except Exception:
            client.delete(REQUEST_KEY)  # nothing was queued: the next request may go
            raise
    finally:
        client.close()
    return request


def _sessions() -> sessionmaker[Session]:
    return sessions_for(get_settings().resolved_database_url)


@shared_task(name=CHECK)
def check() -> dict:
    """Enqueue a training run when enough new labels arrived or the interval passed."""
    settings = get_settings()
    due = is_due(_sessions(), settings.train_min_new_pairs, timedelta(hours=settings.train_max_interval_hours),
                 lock_held=lock_held(settings.redis_url))
    log.info("training_check", due=due.due, reason=due.reason)
    if due.due:
        run.apply_async(kwargs={"scheduled": True}, queue="training")
    return {"due": due.due, "reason": due.reason}


# Acknowledged when it starts, unlike the app's default (acks_late): a run outlasts Redis's
# visibility timeout, and an unacknowledged one would be handed out again and trained twice. A run
# killed midway is not redelivered either; once its lock lapses the next check starts a fresh run
# (the killed one is marked interrupted and never promotes).
@shared_task(name=RUN, acks_late=False, reject_on_worker_lost=False)
def run(config_path: str | None = None, scheduled: bool = False, actor: str | None = None) -> dict:
    """One training run. ``scheduled`` (queued by ``check``): asked again under the lock whether a
    run is due, so runs queued twice (checks while the training worker was away) train once.
    ``actor``: who asked for it by hand (``request_run``); it is recorded as the run's actor."""
    from adapters.registry import open_registry
    from adapters.rollout import open_client
    from trainer.config import TrainConfig
    from trainer.pipeline import run_training

    settings = get_settings()
    config = TrainConfig.from_yaml(config_path or settings.train_config)
    try:
        with training_lock(settings.redis_url):
            if actor is not None:  # started: the lock now refuses a second request, the marker can go
                _clear_request(settings.redis_url)
            if scheduled:
                due = is_due(_sessions(), settings.train_min_new_pairs,  # the lock is ours: no run is alive
                             timedelta(hours=settings.train_max_interval_hours), lock_held=False)
                if not due.due:
                    log.info("training_skipped", reason=due.reason)
                    return {"status": "skipped", "reason": due.reason}
            client = open_client(settings) if config.auto_promote else None
            result = run_training(settings, config, _sessions(), open_registry(settings), client,
                                  actor=actor or "schedule")
    except Busy as exc:
        if actor is not None:
            _clear_request(settings.redis_url)
        log.info("training_skipped", reason=str(exc))
        return {"status": "skipped", "reason": str(exc)}
    return {"status": result.status, "run": result.run_id, "adapter": result.adapter_version}


def _clear_request(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(REQUEST_KEY)
    finally:
        client.close()


def schedule(settings: Settings) -> dict:
    """The periodic job of this queue, for beat: ask whether a training run is due."""
    every = settings.train_check_interval_seconds
    return {"check-training": {"task": CHECK, "schedule": every, "options": {"queue": "training", "expires": every}}}
