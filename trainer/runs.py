"""Training runs as rows: status, current step, config, data snapshot, metrics, decision, timings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from careloop.db import Base, transaction

STEPS = ("snapshot", "sft", "dpo", "evaluate", "gate", "publish")


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
    adapter_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def start_run(sessions: sessionmaker[Session], actor: str, config: dict) -> int:
    with transaction(sessions) as session:
        # A run still marked running was killed: it never promoted anything; say so.
        session.execute(update(TrainingRun).where(TrainingRun.status == "running")
                        .values(status="interrupted", finished_at=_utcnow(),
                                error="the process running it stopped before it finished"))
        run = TrainingRun(actor=actor, config=config)
        session.add(run)
        session.flush()
        return run.id


def update_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
    with transaction(sessions) as session:
        run = session.get(TrainingRun, run_id)
        for key, value in values.items():
            setattr(run, key, value)


def finish_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
    update_run(sessions, run_id, finished_at=_utcnow(), **values)


def get_run(sessions: sessionmaker[Session], run_id: int) -> TrainingRun:
    with sessions() as session:
        return session.get(TrainingRun, run_id)


def recent_runs(sessions: sessionmaker[Session], limit: int = 20) -> list[TrainingRun]:
    with sessions() as session:
        return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))
