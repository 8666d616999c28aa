"""Training runs as rows: status, current step, config, data snapshot, metrics, decision, timings;
and where a run keeps its files (``run_dir``)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from careloop.db import Base, transaction, utcnow
from careloop.settings import Settings

STEPS = ("snapshot", "sft", "dpo", "evaluate", "gate", "publish")


def run_dir(settings: Settings, run_id: int) -> Path:
    """The directory of run ``run_id``'s snapshot, adapters and report."""
    return settings.home / "runs" / str(run_id)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # running -> promoted | candidate (passed, waiting for an admin) | rejected | failed | interrupted
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    step: Mapped[str] = mapped_column(String(16), default="snapshot")
    actor: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decision: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # Within the current step: {"step", "done", "total", "started" (epoch seconds)[, "kinds"]}; see StepProgress.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)
    adapter_version: Mapped[str | None] = mapped_column(String(64))
    # The clinicians' data it trained and was evaluated on, and what was still on its way to the store
    # when its snapshot was taken (``clinician_data``).
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def mark_interrupted(session: Session, started_before: datetime | None = None) -> int:
    """Runs still marked running whose process is gone (the caller knows: it holds the training lock,
    or saw it free) never promoted anything: say so. Returns how many were marked."""
    query = update(TrainingRun).where(TrainingRun.status == "running")
    if started_before is not None:
        query = query.where(TrainingRun.started_at < started_before)
    return session.execute(query.values(status="interrupted", finished_at=utcnow(),
                                        error="the process running it stopped before it finished")).rowcount


def start_run(sessions: sessionmaker[Session], actor: str, config: dict) -> int:
    with transaction(sessions) as session:
        mark_interrupted(session)  # the caller holds the training lock: any other "running" run is dead
        run = TrainingRun(actor=actor, config=config)
        session.add(run)
        session.flush()
        return run.id


def describe_data(data: dict[str, Any] | None) -> str:
    """A run's clinicians' data in a line: what the Admin page and `careloop runs` show."""
    if not data:
        return ""
    pairs, answers = data.get("pairs", {}), data.get("answers", {})
    line = (f"{pairs.get('train', 0)} pairs (+{pairs.get('eval', 0)} held out), "
            f"{answers.get('train', 0)} corrected or approved answers")
    late = data.get("in_flight", {})
    if late.get("outbox_events") or late.get("queued_batches"):
        line += (f"; {late.get('outbox_events', 0)} events, {late.get('queued_batches', 0)} batches still on their "
                 f"way after {late.get('waited_seconds', 0):.0f} s")
    elif late:
        line += f"; none on its way (waited {late.get('waited_seconds', 0):.0f} s)"
    return line


def update_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
    with transaction(sessions) as session:
        run = session.get(TrainingRun, run_id)
        for key, value in values.items():
            setattr(run, key, value)


def finish_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
    update_run(sessions, run_id, finished_at=utcnow(), **values)


def get_run(sessions: sessionmaker[Session], run_id: int) -> TrainingRun:
    with sessions() as session:
        return session.get(TrainingRun, run_id)


def recent_runs(sessions: sessionmaker[Session], limit: int = 20) -> list[TrainingRun]:
    with sessions() as session:
        return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))


class StepProgress:
    """Records how far the current step is (``done`` of ``total`` units: optimizer steps for SFT and
    DPO, answers and scoring passes for evaluation), at most every ``interval`` seconds, so `careloop
    runs` and the admin page can show a percentage and an ETA that move during a long step.

    A step started with units of several kinds (the evaluation's ``answers`` and ``passes``) also
    keeps, per kind, the seconds spent on it: the time since the last report belongs to the work just
    reported, so each kind gets its own pace (``trainer.schedule.progress``). One pace for both swung
    the time left by a median 70% over a run's evaluation (BENCHMARKS.md, issue 29, 7)."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, interval: float = 2.0) -> None:
        self.sessions, self.run_id, self.interval = sessions, run_id, interval
        self.step, self.done, self.total, self.started, self._written = "", 0, 0, 0.0, 0.0
        self.kinds: dict[str, dict[str, float]] = {}
        self._mark = 0.0

    def start(self, step: str, total: int | dict[str, int]) -> None:
        """``total``: the step's units, or its units of each kind."""
        kinds = total if isinstance(total, dict) else {}
        self.kinds = {kind: {"done": 0, "total": max(0, n), "timed": 0, "seconds": 0.0} for kind, n in kinds.items()}
        self.step, self.done, self.started = step, 0, time.time()
        self.total = sum(k["total"] for k in self.kinds.values()) if kinds else max(0, total)
        self._mark = self.started
        self._write()

    def advance(self, units: int = 1, *, to: int | None = None, kind: str | None = None, timed: bool = True) -> None:
        """``units`` more done (or done ``to`` so far); of ``kind`` for a step with kinds. ``timed``:
        whether the time since the last report was spent on them (not for answers read from a cache)."""
        now = time.time()
        self.done = min(self.total, to if to is not None else self.done + units)
        if kind in self.kinds:
            counts = self.kinds[kind]
            counts["done"] = min(counts["total"], counts["done"] + units)
            if timed:
                counts["timed"] += units
                counts["seconds"] += now - self._mark
        self._mark = now
        if now - self._written >= self.interval or self.done >= self.total:
            self._write()

    def _write(self) -> None:
        self._written = time.time()
        record = {"step": self.step, "done": self.done, "total": self.total, "started": self.started}
        update_run(self.sessions, self.run_id, progress=record | ({"kinds": self.kinds} if self.kinds else {}))
