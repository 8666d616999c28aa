"""A student's own conversations, for the chat page's history. Reads only the asking user's rows:
nobody sees another person's conversations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.store import Message


@dataclass(frozen=True)
class ConversationSummary:
    """One of a student's stored conversations, as the history list shows it."""

    id: uuid.UUID
    title: str  # the first question, shortened
    started_at: datetime
    last_at: datetime
    messages: int


def conversations(sessions: sessionmaker[Session], user: str, limit: int = 50) -> list[ConversationSummary]:
    """``user``'s conversations, the most recent first."""
    with sessions() as session:
        rows = session.execute(
            select(Message.conversation_id, func.min(Message.id), func.min(Message.created_at),
                   func.max(Message.created_at), func.count())
            .where(Message.user == user).group_by(Message.conversation_id)
            .order_by(func.max(Message.id).desc()).limit(limit)).all()
        firsts = dict(session.execute(select(Message.id, Message.content).where(
            Message.id.in_([row[1] for row in rows]))).all())
    return [ConversationSummary(conversation_id, title(firsts.get(first_id, "")), started, last, count)
            for conversation_id, first_id, started, last, count in rows]


def messages(sessions: sessionmaker[Session], user: str, conversation_id: uuid.UUID) -> list[Message]:
    """The turns of one conversation, oldest first; empty unless it is ``user``'s own."""
    with sessions() as session:
        return list(session.scalars(select(Message).where(
            Message.conversation_id == conversation_id, Message.user == user).order_by(Message.id)))


def title(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"
