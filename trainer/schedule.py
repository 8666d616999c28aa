"""When to train, one run at a time, and how far a run has got.

Beat calls ``training.check`` every CARELOOP_TRAIN_CHECK_INTERVAL_SECONDS; it enqueues
``training.run`` when CARELOOP_TRAIN_MIN_NEW_PAIRS accepted preference labels arrived since the
last run started, or CARELOOP_TRAIN_MAX_INTERVAL_HOURS passed. A Redis lock with a short expiry,
renewed while the run works, keeps one run at a time, scheduled or started by hand (`careloop
train`); if the process dies the lock lapses within LOCK_SECONDS, so a killed run never blocks the
next. The lock's value names its holder (host, pid): whoever is refused is told who holds it, and a
holder on this host whose process is gone (a SIGKILLed `careloop train`) is set aside at once
instead of blocking until the expiry.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import aware, transaction, utcnow
from feedback.export import labels_since
from trainer.runs import STEPS, TrainingRun, mark_interrupted

LOCK_NAME = "careloop:training-lock"
LOCK_SECONDS = 60


class Busy(Exception):
    """Another training run holds the lock."""

    def __init__(self, holder: str | None):
        self.holder = holder
        host, _, rest = (holder or "").partition(":")
        who = f" (pid {rest.partition(':')[0]} on {host})" if rest else ""
        super().__init__(f"another training run holds the lock{who}")


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str
    new_pairs: int


def is_due(sessions: sessionmaker[Session], min_new_pairs: int, max_interval: timedelta,
           lock_held: bool = True) -> Due:
    """Whether to train now. ``lock_held``: whether the training lock is taken. Every run holds the
    lock, so a run still marked running while the lock is free was killed (with its worker, or a
    `careloop train` SIGKILLed) and its lock lapsed: it blocks nothing, and the labels it never
    learned from count again."""
    with sessions() as session:
        last = session.scalar(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1))
        killed = last is not None and last.status == "running" and not lock_held
        if last is not None and last.status == "running" and not killed:
            return Due(False, f"run {last.id} is still running", 0)
        counted_from = last
        if killed:  # count from the last run that finished (or from the start)
            counted_from = session.scalar(select(TrainingRun).where(
                TrainingRun.status.not_in(("running", "interrupted"))).order_by(TrainingRun.id.desc()).limit(1))
        since = aware(counted_from.started_at) if counted_from else datetime.min.replace(tzinfo=UTC)
        new_pairs = labels_since(session, since)
    stopped = f" (run {last.id} was stopped)" if killed else ""
    if new_pairs >= min_new_pairs:
        return Due(True, f"{new_pairs} new accepted labels (threshold {min_new_pairs}){stopped}", new_pairs)
    if counted_from is not None and datetime.now(UTC) - since >= max_interval:
        return Due(True, f"{max_interval} since run {counted_from.id}{stopped}", new_pairs)
    return Due(False, f"{new_pairs} of {min_new_pairs} new labels{stopped}", new_pairs)


# Delete the lock only if it still has the value we judged dead: never someone else's fresh lock.
_DELETE_IF_UNCHANGED = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _current_holder(client) -> str | None:
    """The lock's holder, after setting aside a holder on this host whose process is gone."""
    holder = client.get(LOCK_NAME)
    if holder is None:
        return None
    host, _, rest = holder.decode(errors="replace").partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
        client.eval(_DELETE_IF_UNCHANGED, 1, LOCK_NAME, holder)
        return _current_holder(client)
    return holder.decode(errors="replace")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def lock_holder(redis_url: str) -> str | None:
    """Who holds the training lock now ("host:pid:nonce"), or None when it is free."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return _current_holder(client)
    finally:
        client.close()


def settle_stopped_runs(sessions: sessionmaker[Session], redis_url: str) -> None:
    """Mark runs whose process is gone as interrupted, so listings never show a dead run as running.
    Every run holds the lock while it works; a run that starts after the lock was seen free has a
    later start time and is left alone."""
    import redis


    checked = utcnow()
    try:
        if lock_held(redis_url):
            return
    except redis.RedisError:  # Redis down: cannot tell, so change nothing (the listing still works)
        return
    with transaction(sessions) as session:
        mark_interrupted(session, started_before=checked)


def lock_held(redis_url: str) -> bool:
    """Whether a training run holds the lock now."""
    return lock_holder(redis_url) is not None


@contextmanager
def training_lock(redis_url: str, seconds: float = LOCK_SECONDS) -> Iterator[None]:
    """Hold the one-run-at-a-time lock, renewing it in the background; raise Busy if taken.
    Raises redis.ConnectionError when Redis does not answer."""
    import redis

    client = redis.Redis.from_url(redis_url)
    lock = client.lock(LOCK_NAME, timeout=seconds, thread_local=False)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    if not lock.acquire(blocking=False, token=token):
        holder = _current_holder(client)
        if holder is not None or not lock.acquire(blocking=False, token=token):
            client.close()
            raise Busy(holder)
    stop = threading.Event()

    def renew() -> None:
        # Redis restarted without persistence loses the lock mid-run: take it back while it is free,
        # or a check would take this live run for a killed one and start another beside it.
        try:
            lock.reacquire()
        except redis.exceptions.LockNotOwnedError:
            client.set(LOCK_NAME, token, nx=True, px=int(seconds * 1000))

    def keep_renewing() -> None:
        while not stop.wait(seconds / 3):
            try:
                renew()
            except redis.RedisError:  # Redis away for now: the next round tries again
                pass

    renewer = threading.Thread(target=keep_renewing, name="careloop-training-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            lock.release()
        except redis.RedisError:  # lapsed, or Redis away: it expires on its own; the run is done anyway
            pass
        client.close()


@dataclass(frozen=True)
class Progress:
    step: str
    percent: float
    eta_seconds: float | None
    step_done: int = 0  # units of the current step done, of step_total (0: not counted)
    step_total: int = 0

    @property
    def step_label(self) -> str:
        return f"{self.step} {self.step_done}/{self.step_total}" if self.step_total else self.step

    @property
    def eta_label(self) -> str:
        """The time left as people say it (issue 29, 7: raw seconds such as "2421 s")."""
        if not self.eta_seconds:
            return ""
        minutes = self.eta_seconds / 60
        if minutes < 1:
            return "under a minute"
        if minutes < 90:
            return f"about {round(minutes)} min"
        return f"about {minutes / 60:.1f} h"


# Each step's expected share of a run, until a finished run has measured them (SmolLM2 on 2 cores,
# BENCHMARKS.md run L).
# A first run's steps (no earlier run to time it by), as measured on the default model beside the ward
# (BENCHMARKS.md, the ward bench with a run: snapshot 8 s, SFT 250, DPO 361, evaluation 925 of 1,544 s).
DEFAULT_SHARES = {"snapshot": 0.01, "sft": 0.16, "dpo": 0.23, "evaluate": 0.58, "gate": 0.01, "publish": 0.01}


def progress(sessions: sessionmaker[Session], run: TrainingRun, now: float | None = None) -> Progress:
    """How far ``run`` is and when it should end: finished steps plus the current step's own pace
    (``step_pace``), with the other steps' durations taken from the last finished run (or
    DEFAULT_SHARES scaled by the current step's pace)."""
    if run.status != "running":
        return Progress(run.step, 100.0, 0.0)
    now = time.time() if now is None else now
    with sessions() as session:
        finished = session.scalars(select(TrainingRun).where(
            TrainingRun.finished_at.is_not(None), TrainingRun.status.in_(("promoted", "candidate", "rejected")))
            .order_by(TrainingRun.id.desc()).limit(5))
        previous = next((r for r in finished if (r.timings or {}).get("total")), None)
    index = STEPS.index(run.step) if run.step in STEPS else 0
    within = run.progress or {}
    counted, elapsed, step_seconds = (0, 0), 0.0, None
    if within.get("step") == run.step and within.get("total"):
        counted = (int(within["done"]), int(within["total"]))
        elapsed = max(0.0, now - within["started"])
        step_seconds = step_pace(within, elapsed)
    if previous is not None:
        expected = [float(previous.timings.get(step, 0.0)) for step in STEPS]
    elif step_seconds:  # no history: scale the default shares by this step's pace
        scale = step_seconds / DEFAULT_SHARES[STEPS[index]]
        expected = [DEFAULT_SHARES[step] * scale for step in STEPS]
    elif index > 0 and sum((run.timings or {}).get(step, 0.0) for step in STEPS[:index]) > 0:
        # no history, the step not counted yet: scale by the steps this run has finished
        took = sum(float((run.timings or {}).get(step, 0.0)) for step in STEPS[:index])
        scale = took / sum(DEFAULT_SHARES[step] for step in STEPS[:index])
        expected = [float((run.timings or {}).get(step, DEFAULT_SHARES[step] * scale)) if i < index
                    else DEFAULT_SHARES[step] * scale for i, step in enumerate(STEPS)]
        remaining = sum(expected[index:]) - max(0.0, now - _step_started(run, now))
        return Progress(run.step, min(99.0, 100.0 * sum(expected[:index]) / sum(expected)), max(0.0, remaining),
                        *counted)
    else:
        shares = [DEFAULT_SHARES[step] for step in STEPS]
        fraction = counted[0] / counted[1] if counted[1] else 0.0
        return Progress(run.step, 100.0 * sum(shares[:index]) + 100.0 * fraction * shares[index], None,
                        *counted)
    if step_seconds:  # the current step's own pace beats history
        expected[index] = step_seconds
    total = sum(expected) or 1.0
    if step_seconds:
        done = sum(expected[:index]) + min(elapsed, step_seconds)
        remaining = max(0.0, step_seconds - elapsed) + sum(expected[index + 1:])
    else:  # between counted steps: the run's whole expected length less its age
        done = sum(expected[:index])
        remaining = max(0.0, total - (datetime.now(UTC) - aware(run.started_at)).total_seconds())
    return Progress(run.step, min(99.0, 100.0 * done / total), remaining, *counted)


# What a unit of each kind of the evaluation's work costs against a scoring pass, for a kind not timed yet
# in this run; each kind's own pace replaces it once timed. A unit of answers is an answer or a share of its
# batch's fixed part (trainer.evaluate.generation_units). SmolLM2-135M-Instruct on 2 cores: 2.0-2.4 s an
# answer in batches of 48, about 7 s one with passages, 0.8-1.4 s a pass (BENCHMARKS.md, session 20).
UNIT_COSTS = {"answers": 5.0, "grounded answers": 8.0, "passes": 1.0}


def step_pace(within: dict, elapsed: float) -> float | None:
    """The current step's whole expected length from its progress record: with kinds of work (the
    evaluation's answers and scoring passes), each kind's remaining units at its own pace; else
    elapsed / fraction done. None until something was timed."""
    kinds = within.get("kinds") or {}
    paces = {kind: c["seconds"] / c["timed"] for kind, c in kinds.items() if c.get("timed") and c["seconds"] > 0}
    if kinds:
        if not paces:
            return None
        known, pace = next(iter(paces.items()))
        per_cost = pace / UNIT_COSTS.get(known, 1.0)
        remaining = sum((c["total"] - c["done"]) * paces.get(kind, per_cost * UNIT_COSTS.get(kind, 1.0))
                        for kind, c in kinds.items())
        return elapsed + remaining
    if within.get("done", 0) > 0 and elapsed > 0:
        return elapsed / min(1.0, within["done"] / within["total"])
    return None


def _step_started(run: TrainingRun, now: float) -> float:
    """When the current step began: its progress record, or (not counted yet) the run's start plus the
    finished steps' durations."""
    within = run.progress or {}
    if within.get("step") == run.step and within.get("started"):
        return float(within["started"])
    took = sum(float((run.timings or {}).get(step, 0.0)) for step in STEPS[:STEPS.index(run.step)])
    return min(now, aware(run.started_at).timestamp() + took)
