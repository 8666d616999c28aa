"""Text no database can hold (issue 31, 1): a NUL character (PostgreSQL refuses it in text) or a lone
UTF-16 surrogate (not UTF-8 encodable) in any text field of any event. Once, a student's message with a
NUL made every batch it was sent in fail for good, taking a nurse's judgment with it.

What each gets: the character is dropped (NUL) or shown as U+FFFD (a lone surrogate) and the event is
stored, on both databases; a field of nothing but NUL is refused as empty, naming the field; an event
whose data a database still refuses (a constructed one, past validation) becomes a dead letter with the
database's reason while the events sent with it are stored.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from feedback import schemas
from feedback.store import TABLES, DeadLetter, store_batch, store_event, stored_event_ids

HOSTILE = "asthma \x00 inhaler \ud800 end"
STORED = "asthma  inhaler \ufffd end"
SCORES = {"accuracy": 4, "helpfulness": 3, "relevance": 5, "comprehensiveness": 2}
PASSAGE = {"number": 1, "doc_id": "medquad-1", "title": "Asthma", "publisher": "NIH", "url": "https://x.org/a",
           "text": "Inhalers help.", "score": 1.0}


def valid(kind: str) -> dict:
    """A valid payload of ``kind`` with every text field filled."""
    return {
        "turn": {"conversation_id": str(uuid.uuid4()), "user": "stu", "role": "assistant", "content": "Rest.",
                 "adapter_version": "med-v0001", "passages": [PASSAGE]},
        "rating": {"message_id": str(uuid.uuid4()), "user": "stu", "thumbs": "down", "reason": "unsafe",
                   "comment": "Too vague."},
        "correction": {"annotator": "dr.o", "prompt": "Dose?", "original": "Lots.", "corrected": "500 mg."},
        "comparison": {"annotator": "nurse.kim", "prompt": "Q?", "response_a": "A.", "response_b": "B.",
                       "version_a": "med-v0002", "version_b": "med-v0001", "shown_order": "ab", "choice": "a",
                       "scores_a": SCORES, "scores_b": SCORES, "corrected_answer": "C."},
    }[kind]


# (kind, field) for every free-text field a person or the model writes, and the passages' texts.
TEXT_FIELDS = [(kind, name) for kind in schemas.EVENTS for name, value in valid(kind).items()
               if isinstance(value, str) and name not in ("conversation_id", "message_id", "role", "thumbs",
                                                          "shown_order", "choice")]


@pytest.mark.parametrize(("kind", "field"), TEXT_FIELDS, ids=[f"{k}.{f}" for k, f in TEXT_FIELDS])
def test_nul_and_lone_surrogates_in_any_text_field_are_made_storable_and_stored(sessions, kind, field):
    event = schemas.parse_event(kind, {**valid(kind), field: HOSTILE})
    assert getattr(event, field) == STORED
    assert store_event(sessions, event)
    with sessions() as session:
        row = session.scalar(select(TABLES[kind]).where(TABLES[kind].event_id == event.event_id))
    assert getattr(row, field) == STORED


def test_nul_in_a_passage_given_to_an_answer_is_made_storable(sessions):
    passage = {**PASSAGE, "title": HOSTILE, "text": HOSTILE}
    event = schemas.parse_event("turn", {**valid("turn"), "passages": [passage]})
    assert store_event(sessions, event)
    with sessions() as session:
        (stored,) = session.scalar(select(TABLES["turn"].passages))
    assert stored["title"] == stored["text"] == STORED


def test_a_field_of_only_nul_is_refused_as_empty_naming_the_field():
    with pytest.raises(schemas.InvalidFeedback, match=r"^content: String should have at least 1 character"):
        schemas.parse_event("turn", {**valid("turn"), "content": "\x00\x00"})


def test_integer_fields_beyond_a_database_integer_are_refused_by_name():
    with pytest.raises(schemas.InvalidFeedback, match="latency_ms"):
        schemas.parse_event("turn", {**valid("turn"), "latency_ms": 2**31})
    with pytest.raises(schemas.InvalidFeedback, match="review_item_id"):
        schemas.parse_event("comparison", {**valid("comparison"), "review_item_id": 2**40})


def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_of_its_batch_is_stored(sessions, database_url):
    """Past validation (another producer, a bug): the batch is stored event by event, the refused one
    kept as a dead letter with the database's reason, so its sender stops resending it."""
    before = schemas.parse_event("turn", valid("turn"))
    after = schemas.parse_event("comparison", valid("comparison"))
    missing_annotator = schemas.CorrectionEvent.model_construct(  # NOT NULL on both databases
        event_id=uuid.uuid4(), message_id=None, annotator=None, prompt="Q?", original="A.", corrected="B.")
    refused = [missing_annotator]
    if database_url.startswith("postgresql"):  # SQLite stores a NUL; PostgreSQL refuses it
        refused.append(schemas.MessageEvent.model_construct(
            **{**valid("turn"), "conversation_id": uuid.uuid4(), "event_id": uuid.uuid4(), "passages": None,
               "content": "nulcheck asthma \x00 end", "demo_model": False, "interrupted": False,
               "latency_ms": None, "prompt_tokens": None, "completion_tokens": None}))
    events = [before, *refused, after]
    assert store_batch(sessions, events, []) == (2, len(refused))
    with sessions() as session:
        letters = session.scalars(select(DeadLetter)).all()
    assert sorted(letter.event_id for letter in letters) == sorted(str(event.event_id) for event in refused)
    assert all(letter.reason.startswith("the database refused it: ") for letter in letters)
    assert stored_event_ids(sessions, [(e.kind, str(e.event_id)) for e in events]) == {str(e.event_id)
                                                                                        for e in events}
    assert store_batch(sessions, events, []) == (0, len(refused)), "a resend stores nothing twice"
    with sessions() as session:
        assert len(session.scalars(select(DeadLetter)).all()) == len(refused)
