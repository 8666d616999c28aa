"""Audit log: who promoted, rolled back, changed a role or exported what, and when.

Rows are append-only; the domain packages call :func:`record` inside the same transaction
as the change they describe, so an action and its audit row commit or fail together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from careloop.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def record(session: Session, actor: str, action: str, target: str = "", **details: Any) -> AuditEvent:
    event = AuditEvent(actor=actor, action=action, target=target, details=details)
    session.add(event)
    return event


def recent(session: Session, limit: int = 100) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))
