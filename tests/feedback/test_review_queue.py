"""The review queue: each item gets its labels from different annotators; skips and returns work."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from support import label

from feedback import review_queue


def _items(sessions, count: int, labels_needed: int = 2) -> list[int]:
    return [review_queue.add_item(sessions, f"Question {i}?", f"answer A{i}", f"answer B{i}", "med-v0002",
                                  "med-v0001", labels_needed=labels_needed, prompt_origin="seed") for i in range(count)]


def test_items_go_to_different_annotators_until_they_have_their_labels(sessions):
    first, second = _items(sessions, 2)
    assert review_queue.next_item(sessions, "nurse.a").id == first
    assert review_queue.next_item(sessions, "nurse.a").id == first  # coming back: the same open item
    assert review_queue.next_item(sessions, "nurse.b").id == first  # the second slot of the same item
    assert review_queue.next_item(sessions, "nurse.c").id == second  # both slots of the first are reserved
    label(sessions, first, "nurse.a", "a")
    label(sessions, first, "nurse.b", "b")
    assert [c.annotator for c in review_queue.labels(sessions, first)] == ["nurse.a", "nurse.b"]
    assert review_queue.next_item(sessions, "nurse.a").id == second  # never the same item twice
    assert review_queue.next_item(sessions, "nurse.d") is None  # second: two reservations; first: done
    assert review_queue.progress(sessions, "nurse.a") == review_queue.Progress(labelled=1, skipped=0, available=0)


def test_a_skipped_item_goes_to_others_and_never_back(sessions):
    first, second = _items(sessions, 2, labels_needed=1)
    assert review_queue.next_item(sessions, "nurse.a").id == first
    review_queue.skip(sessions, first, "nurse.a")
    assert review_queue.next_item(sessions, "nurse.a").id == second
    assert review_queue.next_item(sessions, "nurse.b").id == first
    assert review_queue.progress(sessions, "nurse.a").skipped == 1


def test_submitted_but_not_yet_stored_items_can_be_excluded(sessions):
    first, second = _items(sessions, 2)
    assert review_queue.next_item(sessions, "nurse.a").id == first
    # The page has sent a label for `first`; until the worker stores it, the assignment looks open.
    assert review_queue.next_item(sessions, "nurse.a", exclude=[first]).id == second
    assert review_queue.next_item(sessions, "nurse.a", exclude=[first, second]) is None


def test_a_lapsed_reservation_frees_the_slot(sessions):
    (only,) = _items(sessions, 1, labels_needed=1)
    assert review_queue.next_item(sessions, "nurse.a").id == only
    assert review_queue.next_item(sessions, "nurse.b") is None
    assert review_queue.next_item(sessions, "nurse.b", reservation=timedelta(0)).id == only


def test_a_label_without_a_reservation_still_counts_once(sessions):
    (only,) = _items(sessions, 1, labels_needed=1)
    label(sessions, only, "dr.x", "tie")  # e.g. the reservation lapsed before the label arrived
    assert review_queue.next_item(sessions, "nurse.a") is None
    assert review_queue.progress(sessions, "dr.x").labelled == 1


def test_a_student_question_is_queued_once(sessions):
    import uuid

    question = uuid.uuid4()
    args = ("What is a normal heart rate?", "60-100", "60-100 at rest", "med-v0002", "med-v0001")
    assert review_queue.add_item(sessions, *args, labels_needed=2, prompt_origin="student", student_message_id=question)
    assert review_queue.add_item(sessions, *args, labels_needed=2, prompt_origin="student",
                                 student_message_id=question) is None


def test_two_annotators_never_both_take_the_last_slot(sessions):
    """Issue 18 (suspected, confirmed): annotators asking at the same moment each read the item's
    last slot as free and both reserved it (read-then-insert without a lock); now one gets it."""
    annotators = [f"nurse.{n}" for n in range(6)]
    for round_ in range(5):
        item = review_queue.add_item(sessions, f"Race {round_}?", "answer A", "answer B", "med-v0002", "med-v0001",
                                     labels_needed=1, prompt_origin="seed")
        start = threading.Barrier(len(annotators))

        def take(annotator: str) -> int | None:
            start.wait()
            got = review_queue.next_item(sessions, annotator)
            return got.id if got else None

        with ThreadPoolExecutor(len(annotators)) as pool:
            taken = list(pool.map(take, annotators))
        assert taken.count(item) == 1, f"round {round_}: the one slot of item {item} went to {taken}"
        for annotator, got in zip(annotators, taken, strict=True):
            if got == item:
                label(sessions, item, annotator, "a")
