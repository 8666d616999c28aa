"""Conversation history: one's own conversations, newest first, and never anyone else's."""

from __future__ import annotations

import uuid

from feedback import schemas
from feedback.history import conversations, messages
from feedback.store import store_event


def _turn(sessions, conversation, user, role, content):
    store_event(sessions, schemas.MessageEvent(conversation_id=conversation, user=user, role=role, content=content))


def test_a_student_sees_only_their_own_conversations_newest_first(sessions):
    first, second, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _turn(sessions, first, "student.lee", "user", "What is the first-line treatment for hypertension in adults?")
    _turn(sessions, first, "student.lee", "assistant", "Thiazides, ACE inhibitors, ARBs or CCBs.")
    _turn(sessions, theirs, "student.kim", "user", "My private question")
    _turn(sessions, second, "student.lee", "user", "What is anemia?")
    listed = conversations(sessions, "student.lee")
    assert [c.id for c in listed] == [second, first]
    assert listed[1].title == "What is the first-line treatment for hypertension in adults?"
    assert listed[1].messages == 2 and listed[0].title == "What is anemia?"
    assert [m.role for m in messages(sessions, "student.lee", first)] == ["user", "assistant"]
    assert messages(sessions, "student.lee", theirs) == []  # someone else's: nothing
    assert [c.id for c in conversations(sessions, "student.kim")] == [theirs]
    long = uuid.uuid4()
    _turn(sessions, long, "student.lee", "user", "word " * 40)
    assert conversations(sessions, "student.lee")[0].title.endswith("…")
