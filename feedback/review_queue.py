"""The review queue: which item a clinician labels next, skipping, and progress.

An item needs ``labels_needed`` labels from different annotators. ``next_item`` hands an
annotator an item they have not seen, preferring items closest to complete (so labels finish
items rather than spread thin), and reserves it for them for ``reservation`` so two people do
not both take the last slot: the reservation is written with the item's row locked (a write to it,
which PostgreSQL's row lock and SQLite's single writer both serialise), and the free slots are
counted again under that lock. An annotator who comes back gets their open item again, with the
same ``event_id`` (the assignment's): however many tabs show it, their judgment is one event.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import transaction, utcnow
from feedback.deidentify import scrub
from feedback.store import Comparison, ReviewAssignment, ReviewItem

RESERVATION = timedelta(minutes=30)
# When the queue was last filled (any fill) and when beat's periodic fill last ran, as Redis keys
# (beat keeps its own schedule in a file of its own): the review page says when the next one is due.
FILLED_KEY, SCHEDULED_KEY = "careloop:review-fill:last", "careloop:review-fill:scheduled"
SOON_KEY = "careloop:review-fill:soon"  # set while a fill after new student questions is on its way

@dataclass(frozen=True)
class QueueItem:
    id: int
    prompt: str
    response_a: str
    response_b: str
    version_a: str
    version_b: str
    is_gold: bool
    event_id: Any  # the id this annotator's judgment of this item carries
    passages: list[dict[str, Any]] | None = None  # the library passages both answers were given
    screened: str | None = None  # the request screen's category: the student got its refusal, not these answers


@dataclass(frozen=True)
class Progress:
    labelled: int  # items this annotator completed
    skipped: int
    available: int  # items still open to them


@dataclass(frozen=True)
class Fills:
    """When the queue is filled: the last fill, beat's next periodic one (about: its last plus the
    interval), and whether a fill after new student questions is on its way; None where unknown."""

    last: datetime | None
    next_scheduled: datetime | None
    soon: bool


def record_fill(redis_url: str, scheduled: bool) -> None:
    """Note that a fill just ran (``scheduled``: beat's periodic one, or the one at beat's start)."""
    now = utcnow().isoformat()
    with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
        client.set(FILLED_KEY, now)
        if scheduled:
            client.set(SCHEDULED_KEY, now)


def fill_soon(redis_url: str, expires: float) -> bool:
    """Whether a fill should be sent for new student questions: yes unless one sent before has not
    started yet (it will find these questions too), however many questions arrive and however long
    the fills ahead of it take. Issue 29: a window of the fill's delay let a fill be sent every 30 s
    behind fills of minutes each on the real model, and 99 piled up. The mark lasts until that fill
    starts (``fill_started``) or ``expires`` (the task's own expiry: a fill never run cannot block the next)."""
    with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
        return bool(client.set(SOON_KEY, "1", nx=True, px=max(1, int(expires * 1000))))


def fill_started(redis_url: str) -> None:
    """A fill starts: it finds every question stored so far, so the next new one may send another."""
    with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
        client.delete(SOON_KEY)


def fills(redis_url: str, interval: float) -> Fills:
    """When the queue was and will be filled; all unknown (None) when Redis does not answer."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) as client:
            last, scheduled, soon = client.mget(FILLED_KEY, SCHEDULED_KEY, SOON_KEY)
    except redis.RedisError:
        return Fills(None, None, False)

    def moment(value: bytes | None) -> datetime | None:
        return datetime.fromisoformat(value.decode()).astimezone(UTC) if value else None

    scheduled_at = moment(scheduled)
    return Fills(moment(last), scheduled_at + timedelta(seconds=interval) if scheduled_at else None, soon is not None)


def add_item(sessions: sessionmaker[Session], prompt: str, response_a: str, response_b: str,
             version_a: str, version_b: str, *, labels_needed: int, prompt_origin: str,
             student_message_id: Any = None, gold_choice: str | None = None,
             passages: list[dict[str, Any]] | None = None, screened: str | None = None) -> int | None:
    """Queue an item; None if the student question it came from is already queued. ``passages``: the
    library passages the answers were given (``feedback.schemas.Passage`` fields); ``screened``: the
    request screen's category when it screened the student's question."""
    item = ReviewItem(prompt=scrub(prompt), response_a=scrub(response_a), response_b=scrub(response_b),
                      version_a=version_a, version_b=version_b, labels_needed=labels_needed,
                      prompt_origin=prompt_origin, student_message_id=student_message_id,
                      is_gold=gold_choice is not None, gold_choice=gold_choice, passages=passages, screened=screened)
    try:
        with transaction(sessions) as session:
            session.add(item)
            session.flush()
            return item.id
    except IntegrityError:
        return None


def next_item(sessions: sessionmaker[Session], annotator: str, reservation: timedelta = RESERVATION,
              exclude: Collection[int] = ()) -> QueueItem | None:
    """The item ``annotator`` should label now (their open one, or a new reservation), or None.

    ``exclude``: items the caller already submitted whose labels the worker has not stored yet
    (their assignments still look open), so the page moves on at once.
    """
    now = utcnow()
    exclude = list(exclude)
    for _ in range(3):  # another annotator may take the same slot between our read and our write
        with sessions() as session:
            open_item = session.execute(
                select(ReviewItem, ReviewAssignment.event_id).join(ReviewAssignment).where(
                    ReviewAssignment.annotator == annotator, ReviewAssignment.completed_at.is_(None),
                    ReviewAssignment.skipped.is_(False), ReviewAssignment.assigned_at > now - reservation,
                    ReviewItem.id.not_in(exclude))
                .order_by(ReviewAssignment.assigned_at).limit(1)).first()
            if open_item is not None:
                return _queue_item(*open_item)
            candidate = session.scalar(_open_items(annotator, now - reservation)
                                       .where(ReviewItem.id.not_in(exclude)).limit(1))
            if candidate is None:
                return None
        try:
            with transaction(sessions) as session:
                # Lock the item first (a no-op write), then count its slots again: two annotators who
                # both read a free last slot above reach this one after the other.
                session.execute(update(ReviewItem).where(ReviewItem.id == candidate.id)
                                .values(labels_needed=ReviewItem.labels_needed))
                free = session.scalar(select(_taken(now - reservation) < ReviewItem.labels_needed)
                                      .where(ReviewItem.id == candidate.id))
                if not free:
                    continue  # someone took the last slot between our read and our lock
                stale = session.scalar(select(ReviewAssignment).where(
                    ReviewAssignment.item_id == candidate.id, ReviewAssignment.annotator == annotator))
                if stale is not None:  # their earlier reservation lapsed: renew it (same event id)
                    stale.assigned_at = now
                else:
                    stale = ReviewAssignment(item_id=candidate.id, annotator=annotator, assigned_at=now,
                                             event_id=uuid.uuid4())
                    session.add(stale)
            return _queue_item(candidate, stale.event_id)
        except IntegrityError:
            continue
    return None


def skip(sessions: sessionmaker[Session], item_id: int, annotator: str) -> None:
    """The annotator passes on this item; it goes to others and never comes back to them."""
    with transaction(sessions) as session:
        assignment = session.scalar(select(ReviewAssignment).where(
            ReviewAssignment.item_id == item_id, ReviewAssignment.annotator == annotator))
        if assignment is None:
            session.add(ReviewAssignment(item_id=item_id, annotator=annotator, skipped=True))
        elif assignment.completed_at is None:
            assignment.skipped = True


def judged(sessions: sessionmaker[Session], item_id: int, annotator: str) -> bool:
    """Whether the store has ``annotator``'s judgment of this item."""
    with sessions() as session:
        return session.scalar(select(ReviewAssignment.id).where(
            ReviewAssignment.item_id == item_id, ReviewAssignment.annotator == annotator,
            ReviewAssignment.completed_at.is_not(None))) is not None


def progress(sessions: sessionmaker[Session], annotator: str, reservation: timedelta = RESERVATION,
             exclude: Collection[int] = ()) -> Progress:
    """``annotator``'s counts; ``available`` leaves out ``exclude`` (the item on their screen, and
    those they sent whose labels are not stored yet), so it counts what waits for them after those."""
    with sessions() as session:
        mine = select(ReviewAssignment).where(ReviewAssignment.annotator == annotator).subquery()
        labelled = session.scalar(select(func.count()).select_from(mine).where(mine.c.completed_at.is_not(None)))
        skipped = session.scalar(select(func.count()).select_from(mine).where(mine.c.skipped.is_(True)))
        available = session.scalar(select(func.count()).select_from(
            _open_items(annotator, utcnow() - reservation).where(ReviewItem.id.not_in(list(exclude))).subquery()))
    return Progress(labelled, skipped, available)


def judged_count(sessions: sessionmaker[Session], annotator: str, item_ids: Collection[int]) -> int:
    """How many of ``item_ids`` the store has ``annotator``'s judgment of."""
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(ReviewAssignment).where(
            ReviewAssignment.annotator == annotator, ReviewAssignment.item_id.in_(list(item_ids)),
            ReviewAssignment.completed_at.is_not(None)))


def unfinished(sessions: sessionmaker[Session]) -> int:
    """Items that still need labels."""
    done = (select(func.count()).where(ReviewAssignment.item_id == ReviewItem.id,
                                       ReviewAssignment.completed_at.is_not(None))
            .correlate(ReviewItem).scalar_subquery())
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(ReviewItem).where(done < ReviewItem.labels_needed))


def _open_items(annotator: str, reserved_since: datetime):  # noqa: ANN202 - a Select
    """Items the annotator has not labelled or skipped, with a free slot; nearest to done first."""
    taken = _taken(reserved_since)
    done = (select(func.count()).where(ReviewAssignment.item_id == ReviewItem.id,
                                       ReviewAssignment.completed_at.is_not(None))
            .correlate(ReviewItem).scalar_subquery())
    seen = select(ReviewAssignment.item_id).where(
        ReviewAssignment.annotator == annotator,
        or_(ReviewAssignment.completed_at.is_not(None), ReviewAssignment.skipped.is_(True)))
    return (select(ReviewItem).where(ReviewItem.id.not_in(seen), taken < ReviewItem.labels_needed)
            .order_by(done.desc(), ReviewItem.id))


def _taken(reserved_since: datetime):  # noqa: ANN202 - a scalar subquery
    """An item's slots in use: labels stored, and reservations made after ``reserved_since``."""
    return (select(func.count()).where(
        ReviewAssignment.item_id == ReviewItem.id,
        or_(ReviewAssignment.completed_at.is_not(None),
            and_(ReviewAssignment.skipped.is_(False), ReviewAssignment.assigned_at > reserved_since)))
        .correlate(ReviewItem).scalar_subquery())


def labels(sessions: sessionmaker[Session], item_id: int) -> list[Comparison]:
    with sessions() as session:
        return list(session.scalars(select(Comparison).where(Comparison.review_item_id == item_id)
                                    .order_by(Comparison.id)))


def _queue_item(item: ReviewItem, event_id: Any) -> QueueItem:
    return QueueItem(item.id, item.prompt, item.response_a, item.response_b, item.version_a, item.version_b,
                     item.is_gold, event_id, item.passages, item.screened)
