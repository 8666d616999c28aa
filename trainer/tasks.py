"""Celery tasks of the `training` queue: the scheduled check and the run itself."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import sessions_for
from careloop.log import get_logger
from careloop.settings import Settings, get_settings
from trainer.schedule import Busy, is_due, lock_held, training_lock

log = get_logger(__name__)

CHECK = "training.check"
RUN = "training.run"


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
def run(config_path: str | None = None, scheduled: bool = False) -> dict:
    """One training run. ``scheduled`` (queued by ``check``): asked again under the lock whether a
    run is due, so runs queued twice (checks while the training worker was away) train once."""
    from serving.registry import open_registry
    from serving.rollout import open_client
    from trainer.config import TrainConfig
    from trainer.pipeline import run_training

    settings = get_settings()
    config = TrainConfig.from_yaml(config_path or settings.train_config)
    try:
        with training_lock(settings.redis_url):
            if scheduled:
                due = is_due(_sessions(), settings.train_min_new_pairs,  # the lock is ours: no run is alive
                             timedelta(hours=settings.train_max_interval_hours), lock_held=False)
                if not due.due:
                    log.info("training_skipped", reason=due.reason)
                    return {"status": "skipped", "reason": due.reason}
            client = open_client(settings) if config.auto_promote else None
            result = run_training(settings, config, _sessions(), open_registry(settings), client, actor="schedule")
    except Busy as exc:
        log.info("training_skipped", reason=str(exc))
        return {"status": "skipped", "reason": str(exc)}
    return {"status": result.status, "run": result.run_id, "adapter": result.adapter_version}


def schedule(settings: Settings) -> dict:
    """The periodic job of this queue, for beat: ask whether a training run is due."""
    every = settings.train_check_interval_seconds
    return {"check-training": {"task": CHECK, "schedule": every, "options": {"queue": "training", "expires": every}}}
