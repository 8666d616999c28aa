"""When to train, one run at a time, and how far a run has got.

Beat calls ``training.check`` every CARELOOP_TRAIN_CHECK_INTERVAL_SECONDS; it enqueues
``training.run`` when CARELOOP_TRAIN_MIN_NEW_PAIRS accepted preference labels arrived since the
last run started, or CARELOOP_TRAIN_MAX_INTERVAL_HOURS passed. A Redis lock with a short expiry,
renewed while the run works, keeps one run at a time; if the process dies the lock lapses within
LOCK_SECONDS, so a crashed run never blocks the next.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.store import Comparison, Correction
from trainer.runs import STEPS, TrainingRun

LOCK_NAME = "careloop:training-lock"
LOCK_SECONDS = 60


class Busy(Exception):
    """Another training run holds the lock."""


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str
    new_pairs: int


def is_due(sessions: sessionmaker[Session], min_new_pairs: int, max_interval: timedelta) -> Due:
    with sessions() as session:
        last = session.scalar(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1))
        since = _aware(last.started_at) if last else datetime.min.replace(tzinfo=UTC)
        new_pairs = (session.scalar(select(func.count()).select_from(Comparison).where(
            Comparison.created_at >= since, Comparison.choice.in_(("a", "b"))))
            + session.scalar(select(func.count()).select_from(Correction).where(Correction.created_at >= since)))
    if last is not None and last.status == "running":
        return Due(False, f"run {last.id} is still running", new_pairs)
    if new_pairs >= min_new_pairs:
        return Due(True, f"{new_pairs} new accepted labels (threshold {min_new_pairs})", new_pairs)
    if last is not None and datetime.now(UTC) - since >= max_interval:
        return Due(True, f"{max_interval} since run {last.id}", new_pairs)
    return Due(False, f"{new_pairs} of {min_new_pairs} new labels", new_pairs)


@contextmanager
def training_lock(redis_url: str, seconds: float = LOCK_SECONDS) -> Iterator[None]:
    """Hold the one-run-at-a-time lock, renewing it in the background; raise Busy if taken."""
    import redis

    client = redis.Redis.from_url(redis_url)
    lock = client.lock(LOCK_NAME, timeout=seconds, thread_local=False)
    if not lock.acquire(blocking=False):
        raise Busy("another training run holds the lock")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            lock.reacquire()

    renewer = threading.Thread(target=renew, name="careloop-training-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        lock.release()


@dataclass(frozen=True)
class Progress:
    step: str
    percent: float
    eta_seconds: float | None


def progress(sessions: sessionmaker[Session], run: TrainingRun) -> Progress:
    """How far ``run`` is, and when it should end, judged by the last finished run's step timings."""
    if run.status != "running":
        return Progress(run.step, 100.0, 0.0)
    with sessions() as session:
        finished = session.scalars(select(TrainingRun).where(
            TrainingRun.finished_at.is_not(None), TrainingRun.status.in_(("promoted", "candidate", "rejected")))
            .order_by(TrainingRun.id.desc()).limit(5))
        previous = next((r for r in finished if (r.timings or {}).get("total")), None)
    index = STEPS.index(run.step) if run.step in STEPS else 0
    if previous is None or not previous.timings.get("total"):
        return Progress(run.step, 100.0 * index / len(STEPS), None)
    durations = [previous.timings.get(step, 0.0) for step in STEPS]
    done = sum(durations[:index])
    total = sum(durations) or 1.0
    elapsed = (datetime.now(UTC) - _aware(run.started_at)).total_seconds()
    return Progress(run.step, min(99.0, 100.0 * done / total), max(0.0, total - elapsed))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
