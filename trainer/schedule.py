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


def is_due(sessions: sessionmaker[Session], min_new_pairs: int, max_interval: timedelta,
           lock_held: bool = True) -> Due:
    """Whether to train now. ``lock_held``: whether the training lock is taken. A run of the training
    worker (actor "schedule", which holds the lock) still marked running while the lock is free was
    killed with its worker, its lock lapsed: it blocks nothing, and the labels it never learned from
    count again. A run started by hand (`careloop train`, no lock) blocks until it ends."""
    with sessions() as session:
        last = session.scalar(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1))
        killed = last is not None and last.status == "running" and last.actor == "schedule" and not lock_held
        if last is not None and last.status == "running" and not killed:
            return Due(False, f"run {last.id} is still running", 0)
        counted_from = last
        if killed:  # count from the last run that finished (or from the start)
            counted_from = session.scalar(select(TrainingRun).where(
                TrainingRun.status.not_in(("running", "interrupted"))).order_by(TrainingRun.id.desc()).limit(1))
        since = _aware(counted_from.started_at) if counted_from else datetime.min.replace(tzinfo=UTC)
        new_pairs = (session.scalar(select(func.count()).select_from(Comparison).where(
            Comparison.created_at >= since, Comparison.choice.in_(("a", "b"))))
            + session.scalar(select(func.count()).select_from(Correction).where(Correction.created_at >= since)))
    stopped = f" (run {last.id} stopped with its worker)" if killed else ""
    if new_pairs >= min_new_pairs:
        return Due(True, f"{new_pairs} new accepted labels (threshold {min_new_pairs}){stopped}", new_pairs)
    if counted_from is not None and datetime.now(UTC) - since >= max_interval:
        return Due(True, f"{max_interval} since run {counted_from.id}{stopped}", new_pairs)
    return Due(False, f"{new_pairs} of {min_new_pairs} new labels{stopped}", new_pairs)


def lock_held(redis_url: str) -> bool:
    """Whether a training run holds the lock now."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return bool(client.exists(LOCK_NAME))
    finally:
        client.close()


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
