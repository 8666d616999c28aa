"""The feedback events, as pydantic models: what the bot sends and the worker validates. Each is
named for what it records plus ``Event`` (``ComparisonEvent``); the stored row of the same thing is
the table without the suffix (``feedback.store.Comparison``).

Every event carries a UUID made by the client (``event_id``); storing is idempotent on it, so a
replayed or redelivered event never makes a second row.

The clinicians' vocabulary is defined here once: the four axes (``AXES``, the fields of ``Scores``)
and the choices of a comparison (``CHOICES``); the review page, annotator quality and the LLM judge
(through ``feedback.export``) use these.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from careloop.text import storable
from feedback.deidentify import scrub_many

INT4_MAX = 2**31 - 1  # the largest value of an Integer column (PostgreSQL's integer)
Text = Annotated[str, Field(min_length=1, max_length=20_000)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Score = Annotated[int, Field(ge=1, le=5)]
SAFETY_CATEGORIES = ("harmful_advice", "missed_emergency", "wrong_dose", "misinformation",
                     "not_supported_by_sources", "privacy", "other")
Choice = Literal["a", "b", "tie", "both_bad"]  # a / b: that response is the better one
CHOICES: tuple[str, ...] = get_args(Choice)


def formerly(name: str, before: str) -> AliasChoices:
    """A field renamed by migration 0012, read under either name: events written before the upgrade
    (waiting in a bot's outbox or the broker's queue) are stored, not dead-lettered as unknown fields."""
    return AliasChoices(name, before)


class Record(BaseModel):
    """A part of an event: every string in it is made storable before it is checked (a question of
    only NUL characters is then empty, and refused as empty)."""

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        return storable(value) if isinstance(value, str) else value


class Event(Record):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]  # its name on the wire (outbox, Celery task) and in dead letters

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)


class Scores(Record):
    """The four clinician axes, 1-5."""

    model_config = ConfigDict(extra="forbid")

    accuracy: Score
    helpfulness: Score
    relevance: Score
    comprehensiveness: Score


AXES: tuple[str, ...] = tuple(Scores.model_fields)


class Passage(Record):
    """A library passage an answer was given, as numbered in its prompt (cited as [number])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: Annotated[int, Field(ge=1, le=20)]
    doc_id: Annotated[str, Field(max_length=128)]
    title: Annotated[str, Field(max_length=512)]
    publisher: Annotated[str, Field(max_length=512)] = ""
    url: Annotated[str, Field(max_length=2048)] = ""
    text: Annotated[str, Field(max_length=5_000)]
    score: float = 0.0


class MessageEvent(Event):
    """One chat message (the student's question or the model's answer). ``passages``: the library
    passages the answer was given (an empty list: retrieval found none relevant; None: retrieval was off)."""

    kind = "turn"

    conversation_id: uuid.UUID
    user: Name
    role: Literal["user", "assistant"]
    content: Text
    adapter_version: Annotated[str, Field(max_length=128)] = ""
    demo_model: bool = False
    interrupted: bool = False  # an answer cut off before its end (Stop, a page reloaded, serving lost)
    latency_ms: Annotated[int, Field(ge=0, le=INT4_MAX)] | None = None
    prompt_tokens: Annotated[int, Field(ge=0, le=INT4_MAX)] | None = None
    completion_tokens: Annotated[int, Field(ge=0, le=INT4_MAX)] | None = None
    passages: Annotated[list[Passage] | None,
                        Field(max_length=20, validation_alias=formerly("passages", "sources"))] = None
    # When it was asked or answered, by the bot's clock (None: when stored). Issue 29, 5: the history
    # stamped every conversation with the time ingest caught up, not the time the student asked.
    created_at: AwareDatetime | None = None
    # The request screen's category (``bot.screen``) when the question was screened: set on the question
    # and on the screen's refusal that answered it (the model was not asked). None: not screened.
    screened: Annotated[str, Field(min_length=1, max_length=32)] | None = None


class RatingEvent(Event):
    """A thumbs up/down on one answer, with an optional reason and comment."""

    kind = "rating"

    message_id: uuid.UUID  # the event_id of the rated answer (a MessageEvent)
    user: Name
    thumbs: Literal["up", "down"]
    reason: Annotated[str, Field(max_length=64)] = ""
    comment: Annotated[str, Field(max_length=5_000)] = ""
    # When the user submitted it, set by the client: of a user's ratings of one answer the latest
    # stands, even if an earlier one reaches the store last (a resend).
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("created_at")
    @classmethod
    def _as_utc(cls, moment: datetime) -> datetime:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class CorrectionEvent(Event):
    """A clinician's corrected version of one answer (becomes a chosen-over-original pair)."""

    kind = "correction"

    message_id: uuid.UUID | None = None
    annotator: Name
    prompt: Text
    original: Text
    corrected: Text


class ComparisonEvent(Event):
    """A clinician's side-by-side judgment of two answers to one prompt."""

    kind = "comparison"

    # When the clinician pressed Submit, by the bot's clock (None: when stored): a training run trains on
    # the judgments sent before it started, however late they were stored (issue 29, 2).
    created_at: AwareDatetime | None = None
    review_item_id: Annotated[int, Field(ge=1, le=INT4_MAX)] | None = None
    annotator: Name
    prompt: Text
    response_a: Text
    response_b: Text
    # The adapter version (or base model) that wrote each response.
    version_a: Annotated[str, Field(max_length=128, validation_alias=formerly("version_a", "source_a"))]
    version_b: Annotated[str, Field(max_length=128, validation_alias=formerly("version_b", "source_b"))]
    shown_order: Literal["ab", "ba"]  # which response was shown on the left
    choice: Choice
    scores_a: Scores
    scores_b: Scores
    safety_flag: bool = False
    safety_category: Literal[SAFETY_CATEGORIES] | None = None  # type: ignore[valid-type]
    corrected_answer: Annotated[str, Field(max_length=20_000)] | None = None
    seconds_spent: Annotated[float, Field(ge=0, le=86_400)] | None = None
    # The event id of the same annotator's judgment of this item that this one replaces (the review
    # page's "Change my last judgment"); the store keeps one judgment per item and annotator either way.
    amends: uuid.UUID | None = None

    @model_validator(mode="after")
    def _flag_needs_category(self) -> ComparisonEvent:
        if self.safety_flag and self.safety_category is None:
            raise ValueError("safety_category is required when safety_flag is set")
        return self


# Free-text fields, scrubbed of identifiers before the event is written anywhere.
FREE_TEXT = ("content", "comment", "prompt", "original", "corrected", "response_a", "response_b", "corrected_answer")


def scrubbed(event: Event) -> Event:
    """``event`` with its free text scrubbed of identifiers (``feedback.deidentify``)."""
    fields = [name for name in FREE_TEXT if isinstance(getattr(event, name, None), str)]
    return event.model_copy(update=dict(zip(fields, scrub_many([getattr(event, name) for name in fields]),
                                            strict=True)))


# The one registry of event kinds; the store maps the same kinds to its tables (``feedback.store.TABLES``).
EVENTS: dict[str, type[Event]] = {event.kind: event for event in (MessageEvent, RatingEvent, CorrectionEvent,
                                                                  ComparisonEvent)}


class InvalidFeedback(ValueError):
    """An event that does not validate; the message names each bad field."""


def parse_event(kind: str, payload: dict) -> Event:
    if kind not in EVENTS:
        raise InvalidFeedback(f"unknown event kind {kind!r} (expected one of {', '.join(EVENTS)})")
    try:
        return EVENTS[kind].model_validate(payload)
    except ValidationError as exc:
        raise InvalidFeedback("; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or kind}: {e['msg']}" for e in exc.errors())) from None
