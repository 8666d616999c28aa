"""The durable store of what people said: chat turns, ratings, corrections, comparisons, the review queue,
and dead letters for events that failed validation. Tables change only through Alembic.

``store_event`` is idempotent: each table has a unique ``event_id``, so a redelivered Celery task
or a replayed outbox entry finds its row already there and stores nothing twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, Uuid, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from careloop.db import Base, transaction, utcnow
from careloop.text import storable
from feedback import schemas
from feedback.deidentify import scrub


class Message(Base):
    """One chat turn; assistant turns record which adapter version answered and how fast."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[Any] = mapped_column(Uuid, unique=True)
    conversation_id: Mapped[Any] = mapped_column(Uuid, index=True)
    user: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    adapter_version: Mapped[str] = mapped_column(String(128), default="")
    demo_model: Mapped[bool] = mapped_column(Boolean, default=False)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)  # an answer cut off before its end
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # The library passages the answer was given ([]: none relevant; None: not grounded), for reviewers.
    passages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    screened: Mapped[str | None] = mapped_column(String(32))  # the request screen's category (bot.screen), if any
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Rating(Base):
    """A user's rating of one answer: one per (answer, user); a later rating replaces an earlier one."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("message_id", "user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[Any] = mapped_column(Uuid, unique=True)
    # The rated turn's event id; no foreign key, because the rating may be stored first.
    message_id: Mapped[Any] = mapped_column(Uuid, index=True)
    user: Mapped[str] = mapped_column(String(128))
    thumbs: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(64), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    # When the user submitted it (the event's own time): the latest of a user's ratings wins.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Correction(Base):
    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[Any] = mapped_column(Uuid, unique=True)
    message_id: Mapped[Any | None] = mapped_column(Uuid, index=True)
    annotator: Mapped[str] = mapped_column(String(128), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    original: Mapped[str] = mapped_column(Text)
    corrected: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Comparison(Base):
    """A clinician's judgment; one per (review item, annotator): a second one is refused."""

    __tablename__ = "comparisons"
    __table_args__ = (UniqueConstraint("review_item_id", "annotator"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[Any] = mapped_column(Uuid, unique=True)
    review_item_id: Mapped[int | None] = mapped_column(Integer, index=True)
    annotator: Mapped[str] = mapped_column(String(128), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    version_a: Mapped[str] = mapped_column(String(128))
    version_b: Mapped[str] = mapped_column(String(128))
    shown_order: Mapped[str] = mapped_column(String(2))
    choice: Mapped[str] = mapped_column(String(8))
    scores_a: Mapped[dict[str, int]] = mapped_column(JSON)
    scores_b: Mapped[dict[str, int]] = mapped_column(JSON)
    safety_flag: Mapped[bool] = mapped_column(Boolean, default=False)
    safety_category: Mapped[str | None] = mapped_column(String(32))
    corrected_answer: Mapped[str | None] = mapped_column(Text)
    seconds_spent: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class ReviewItem(Base):
    """A prompt with two candidate answers waiting for clinician labels."""

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_origin: Mapped[str] = mapped_column(String(16))  # "student" | "seed"
    # The student's question it came from: unique, so a question is queued at most once.
    student_message_id: Mapped[Any | None] = mapped_column(Uuid, unique=True)
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    version_a: Mapped[str] = mapped_column(String(128))
    version_b: Mapped[str] = mapped_column(String(128))
    labels_needed: Mapped[int] = mapped_column(Integer)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_choice: Mapped[str | None] = mapped_column(String(8))
    # The library passages both answers were given (feedback.schemas.Passage fields; None: not grounded).
    passages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    screened: Mapped[str | None] = mapped_column(String(32))  # the request screen's category, if any
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class ReviewAssignment(Base):
    """Who was shown which item; completed when their comparison is stored, or skipped."""

    __tablename__ = "review_assignments"
    __table_args__ = (UniqueConstraint("item_id", "annotator"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id", ondelete="CASCADE"), index=True)
    annotator: Mapped[str] = mapped_column(String(128), index=True)
    # The event id of this annotator's judgment of this item, made once: every tab showing the
    # item sends the same id, so a second submit is a replay, never a second label.
    event_id: Mapped[Any] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)


class DeadLetter(Base):
    """An event that failed validation: kept (scrubbed) with the reason, never silently dropped."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str | None] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class SupersededEvent(Base):
    """A valid event the store handled without a row of its own: a rating replaced by the same
    user's later rating of the same answer, or a second judgment of an item by the same annotator
    (refused: the first stands). Kept so the sender knows it arrived and stops resending it."""

    __tablename__ = "superseded_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[Any] = mapped_column(Uuid, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


# Each event kind's table (the kinds: ``schemas.EVENTS``).
TABLES: dict[str, type[Base]] = {"turn": Message, "rating": Rating, "correction": Correction, "comparison": Comparison}
assert TABLES.keys() == schemas.EVENTS.keys(), "every event kind is stored in a table of its own"


def store_event(sessions: sessionmaker[Session], event: schemas.Event) -> bool:
    """Store a validated event once; return False if it was already stored (a replay)."""
    return store_events(sessions, [event]) == 1


def store_events(sessions: sessionmaker[Session], events: list[schemas.Event],
                 dead_letters: list[tuple[str, Any, str]] = ()) -> int:
    """Store validated events (and dead letters: kind, payload, reason) in one transaction, each
    event at most once however often it is replayed. Returns how many events were new.

    A rating replaces the same user's earlier rating of the same answer (the later submit wins);
    a second judgment of a review item by the same annotator is refused (the first stands). Either
    way the event that lost is recorded in ``superseded_events``."""
    new = 0
    with transaction(sessions) as session:
        insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        for event in events:
            table = TABLES[event.kind]
            values = schemas.scrubbed(event).model_dump()
            if isinstance(event, schemas.RatingEvent):
                new += _store_rating(session, insert, values)
                continue
            if values.get("created_at", ...) is None:
                del values["created_at"]  # not told when it happened: when it is stored
            amends = values.pop("amends", None)  # a Comparison's; no column: superseded_events keeps the link
            if amends is not None and _amend(session, amends, values):
                new += 1
                continue
            # No conflict target: a repeated event_id (a replay) or, for a judgment, a repeated
            # (item, annotator) (a second label) both insert nothing.
            inserted = session.execute(insert(table).values(**values).on_conflict_do_nothing()
                                       .returning(table.id)).first()
            if inserted is None:
                if isinstance(event, schemas.ComparisonEvent) and not _has(session, table, event.event_id):
                    _supersede(session, event.event_id, "comparison",
                               f"item {event.review_item_id} was already judged by {event.annotator}; "
                               "the first judgment stands")
                continue  # a replay: the row is already there
            new += 1
            if isinstance(event, schemas.ComparisonEvent) and event.review_item_id is not None:
                _complete_assignment(session, event.review_item_id, event.annotator)
        for kind, payload, reason in dead_letters:
            _add_dead_letter(session, kind, payload, reason)
    return new


def store_batch(sessions: sessionmaker[Session], events: list[schemas.Event],
                dead_letters: list[tuple[str, Any, str]]) -> tuple[int, int]:
    """``store_events`` for a worker's batch: in one transaction, or, when the database refuses the
    data of some event (an error no retry can cure), each event in its own, the refused ones kept as
    dead letters with the database's reason, so one bad event never holds back the others. Returns
    (events stored, dead letters)."""
    try:
        return store_events(sessions, events, dead_letters), len(dead_letters)
    except (DataError, IntegrityError):
        pass
    stored, dead_letters = 0, list(dead_letters)
    for event in events:
        try:
            stored += store_events(sessions, [event])
        except (DataError, IntegrityError) as exc:
            reason = f"the database refused it: {str(exc.orig).strip().splitlines()[0][:300]}"
            dead_letters.append((event.kind, event.model_dump(mode="json"), reason))
    store_events(sessions, [], dead_letters)
    return stored, len(dead_letters)


def _store_rating(session: Session, insert: Any, values: dict[str, Any]) -> int:
    """Keep the latest of a user's ratings of an answer (by submit time); 1 if this one is new."""
    event_id = values["event_id"]
    if _has(session, Rating, event_id) or _has(session, SupersededEvent, event_id):
        return 0  # a replay
    earlier = session.scalar(select(Rating.event_id).where(Rating.message_id == values["message_id"],
                                                           Rating.user == values["user"]))
    statement = insert(Rating).values(**values)
    kept = session.execute(statement.on_conflict_do_update(
        index_elements=["message_id", "user"], set_={key: statement.excluded[key] for key in values},
        where=Rating.created_at <= statement.excluded.created_at).returning(Rating.id)).first()
    if kept is None:  # the user rated this answer again later: that rating stands
        _supersede(session, event_id, "rating", "a later rating of the same answer by the same user stands")
        return 0
    if earlier is not None:
        _supersede(session, earlier, "rating", f"replaced by the same user's later rating {event_id}")
    return 1


def _amend(session: Session, amends: Any, values: dict[str, Any]) -> bool:
    """Replace the judgment ``amends`` with this one (same item and annotator), in place: the item
    keeps one label, the replaced event goes to ``superseded_events``. False when there is nothing
    to replace here: this amendment is stored already (a replay), or the judgment it replaces is not
    stored (yet): then it is stored as the judgment, and the replaced one, should it come later, is
    refused as a second judgment of the item."""
    event_id = values["event_id"]
    if _has(session, Comparison, event_id) or _has(session, SupersededEvent, event_id):
        return False
    row = session.scalar(select(Comparison).where(Comparison.event_id == amends))
    if row is None or (row.review_item_id, row.annotator) != (values["review_item_id"], values["annotator"]):
        return False
    for key, value in values.items():
        if key != "created_at":  # a change keeps the judgment's time: when it was first sent
            setattr(row, key, value)
    _supersede(session, amends, "comparison", f"amended by the same annotator's later judgment {event_id}")
    return True


def _has(session: Session, table: type[Base], event_id: Any) -> bool:
    return session.scalar(select(table.id).where(table.event_id == event_id)) is not None


def _supersede(session: Session, event_id: Any, kind: str, reason: str) -> None:
    if not _has(session, SupersededEvent, event_id):
        session.add(SupersededEvent(event_id=event_id, kind=kind, reason=reason))
        session.flush()


def _complete_assignment(session: Session, item_id: int, annotator: str) -> None:
    """The label and its assignment commit together: progress never counts a label twice or misses one."""
    assignment = session.scalar(select(ReviewAssignment).where(
        ReviewAssignment.item_id == item_id, ReviewAssignment.annotator == annotator))
    if assignment is None:
        assignment = ReviewAssignment(item_id=item_id, annotator=annotator)
        session.add(assignment)
    assignment.completed_at = utcnow()
    assignment.skipped = False


def _add_dead_letter(session: Session, kind: str, payload: Any, reason: str) -> None:
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    event_id = str(event_id)[:64] if event_id else None
    if event_id and session.scalar(select(DeadLetter.id).where(DeadLetter.event_id == event_id)) is not None:
        return  # the same bad event delivered again
    session.add(DeadLetter(event_id=event_id, kind=str(kind)[:32], payload=_scrubbed(payload), reason=reason))


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(storable(value))
    if isinstance(value, dict):
        return {str(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value if value is None or isinstance(value, int | float | bool) else repr(value)


def stored_event_ids(sessions: sessionmaker[Session], events: list[tuple[str, str]]) -> set[str]:
    """Which of these (kind, event_id) the store holds, as a row, a superseded event or a dead letter."""
    wanted: dict[str, list[uuid.UUID]] = {}
    for kind, event_id in events:
        if kind in TABLES:
            wanted.setdefault(kind, []).append(uuid.UUID(event_id))
    found: set[str] = set()
    with sessions() as session:
        for kind, ids in wanted.items():
            table = TABLES[kind]
            for start in range(0, len(ids), 500):
                for known in (table, SupersededEvent):
                    found |= {str(x) for x in session.scalars(select(known.event_id).where(
                        known.event_id.in_(ids[start:start + 500])))}
        ids = [event_id for _, event_id in events]
        for start in range(0, len(ids), 500):
            found |= set(session.scalars(select(DeadLetter.event_id).where(
                DeadLetter.event_id.in_(ids[start:start + 500]))))
    return found
