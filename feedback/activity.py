"""How much feedback arrives: stored events per day and kind, for the admin page's chart. The bot
reads it here rather than querying feedback's tables itself."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

from sqlalchemy import select, true
from sqlalchemy.orm import Session, sessionmaker

from feedback.store import Comparison, Correction, Message, Rating

# kind as the chart names it -> the table and which of its rows count
_KINDS = (("questions", Message, Message.role == "user"), ("ratings", Rating, true()),
          ("judgments", Comparison, true()), ("corrections", Correction, true()))
ACTIVITY_KINDS: tuple[str, ...] = tuple(kind for kind, _, _ in _KINDS)


def daily_counts(sessions: sessionmaker[Session], since: date) -> Counter[tuple[date, str]]:
    """Stored events per (UTC day, kind) from ``since`` (a day) on; days without events are absent."""
    start = datetime.combine(since, datetime.min.time(), tzinfo=UTC)
    counts: Counter[tuple[date, str]] = Counter()
    with sessions() as session:
        for kind, table, extra in _KINDS:
            for moment in session.scalars(select(table.created_at).where(table.created_at >= start, extra)):
                counts[(moment.date(), kind)] += 1
    return counts
