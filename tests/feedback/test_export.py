"""Export: TRL-ready shapes, explicit handling of ties and both-bad, corrections, quality filtering,
a prompt-disjoint split and a reproducible snapshot hash."""

from __future__ import annotations

import json
import uuid

import pytest
from support import label

from careloop import audit
from feedback import review_queue, schemas
from feedback.export import ExportConfig, export, in_eval
from feedback.store import store_event

# The library passages both answers of an item were written from (review items generated with retrieval on).
SOURCES = [{"number": 1, "doc_id": "medquad-GHR-1", "title": "High blood pressure", "publisher": "NIH",
            "url": "https://medlineplus.gov/hbp.html", "text": "Blood pressure is high at 130/80 or above.",
            "score": 0.9}]


@pytest.fixture
def feedback(sessions):
    """A small but complete body of feedback."""
    def item(prompt: str, gold: str | None = None, passages: list[dict] | None = None) -> int:
        return review_queue.add_item(sessions, prompt, f"good answer to {prompt}", f"poor answer to {prompt}",
                                     "med-v0002", "med-v0001", labels_needed=3, prompt_origin="seed", gold_choice=gold,
                                     passages=passages)

    majority, tie = item("Q majority?", passages=SOURCES), item("Q tie?")
    both_bad, split = item("Q both bad?"), item("Q split?")
    for annotator, choice in [("n1", "a"), ("n2", "a"), ("n3", "b")]:
        label(sessions, majority, annotator, choice)
    label(sessions, tie, "n1", "tie")
    label(sessions, both_bad, "n1", "both_bad", corrected_answer="the corrected answer")
    label(sessions, split, "n1", "a")
    label(sessions, split, "n2", "b")
    # A careless annotator: wrong on every gold item, so their other labels are dropped.
    for index in range(3):
        label(sessions, item(f"gold {index}?", gold="a"), "careless", "b")
    label(sessions, item("Q careless?"), "careless", "a")
    store_event(sessions, schemas.CorrectionEvent(annotator="dr.o", prompt="Dose of paracetamol?",
                                             original="Take as much as you like.",
                                             corrected="Adults: 500 mg-1 g every 4-6 h, at most 4 g a day."))
    conversation, answer = uuid.uuid4(), uuid.uuid4()
    store_event(sessions, schemas.MessageEvent(conversation_id=conversation, user="s", role="user",
                                               content="What is BMI?"))
    store_event(sessions, schemas.MessageEvent(event_id=answer, conversation_id=conversation, user="s",
                                               role="assistant", content="Weight divided by height squared.",
                                               passages=SOURCES))
    store_event(sessions, schemas.RatingEvent(message_id=answer, user="s", thumbs="up"))
    return sessions


def _rows(out, split="train") -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_dpo_pairs_follow_the_majority_and_corrections(feedback, tmp_path):
    manifest = export(feedback, ExportConfig("dpo", eval_fraction=0), tmp_path / "dpo", actor="test")
    rows = _rows(tmp_path / "dpo")
    pairs = {(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    assert pairs == {
        ("Q majority?", "good answer to Q majority?", "poor answer to Q majority?"),
        ("Q both bad?", "the corrected answer", "good answer to Q both bad?"),
        ("Q both bad?", "the corrected answer", "poor answer to Q both bad?"),
        ("Dose of paracetamol?", "Adults: 500 mg-1 g every 4-6 h, at most 4 g a day.", "Take as much as you like."),
    }
    majority = next(r for r in rows if r["prompt"][0]["content"] == "Q majority?")
    assert (majority["agreement"], majority["label_count"]) == (0.667, 3)
    # The passages its answers were written from, for the trainer to ground the (bare) question with.
    assert majority["passages"] == SOURCES and not [r for r in rows if r is not majority and "passages" in r]
    assert all(r["chosen"][0]["role"] == "assistant" and r["prompt"][0]["role"] == "user" for r in rows)
    assert manifest.dropped == {"gold item (measures annotators)": 3, "label from excluded annotator": 1,
                                "rating (used by kto only)": 1, "split vote": 1, "tie: no preference": 1}
    assert manifest.excluded_annotators == {"careless": "gold accuracy 0.00 < 0.60 over 3 gold items"}
    assert manifest.counts == {"train": 4, "eval": 0} and "careless" not in manifest.annotators
    with feedback() as session:
        (event,) = [e for e in audit.recent(session) if e.action == "feedback.export"]
    assert (event.actor, event.target) == ("test", str(tmp_path / "dpo"))


def test_sft_and_kto_shapes(feedback, tmp_path):
    export(feedback, ExportConfig("sft", eval_fraction=0), tmp_path / "sft", actor="test")
    sft = _rows(tmp_path / "sft")
    assert sorted(r["messages"][1]["content"] for r in sft) == sorted([
        "good answer to Q majority?", "the corrected answer", "Adults: 500 mg-1 g every 4-6 h, at most 4 g a day."])
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in sft)
    export(feedback, ExportConfig("kto", eval_fraction=0), tmp_path / "kto", actor="test")
    kto = {(r["prompt"][0]["content"], r["completion"][0]["content"]): r["label"] for r in _rows(tmp_path / "kto")}
    assert kto[("What is BMI?", "Weight divided by height squared.")] is True  # the student's thumbs up
    rated = next(r for r in _rows(tmp_path / "kto") if r["origin"] == "rating")
    assert rated["passages"] == SOURCES, "a rated chat answer carries the passages it was given"
    assert kto[("Q both bad?", "the corrected answer")] is True
    assert kto[("Q both bad?", "good answer to Q both bad?")] is False
    assert kto[("Q majority?", "poor answer to Q majority?")] is False


def test_split_keeps_each_prompt_on_one_side_and_the_hash_is_reproducible(sessions, tmp_path):
    for index in range(40):
        store_event(sessions, schemas.CorrectionEvent(annotator="dr.o", prompt=f"Question number {index % 20}?",
                                                 original="wrong", corrected=f"right {index}"))
    first = export(sessions, ExportConfig("dpo", eval_fraction=0.3), tmp_path / "one", actor="test")
    again = export(sessions, ExportConfig("dpo", eval_fraction=0.3), tmp_path / "two", fmt="parquet", actor="test")
    train = {r["prompt"][0]["content"] for r in _rows(tmp_path / "one", "train")}
    held_out = {r["prompt"][0]["content"] for r in _rows(tmp_path / "one", "eval")}
    assert train and held_out and not train & held_out
    assert all(in_eval(p, 0.3) for p in held_out)
    assert first.counts["train"] + first.counts["eval"] == 40
    assert first.snapshot_sha256 == again.snapshot_sha256  # same data, same hash, whatever the format


def test_formats_load_as_datasets(feedback, tmp_path):
    from datasets import load_dataset, load_from_disk

    export(feedback, ExportConfig("dpo", eval_fraction=0), tmp_path / "pq", fmt="parquet", actor="test")
    parquet = load_dataset("parquet", data_files=str(tmp_path / "pq" / "train.parquet"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(parquet.column_names) and len(parquet) == 4
    export(feedback, ExportConfig("kto", eval_fraction=0), tmp_path / "hf", fmt="hf", actor="test")
    saved = load_from_disk(str(tmp_path / "hf" / "dataset"))
    assert {"prompt", "completion", "label"} <= set(saved["train"].column_names)


def test_time_window(feedback, tmp_path):
    from datetime import UTC, datetime, timedelta

    future = datetime.now(UTC) + timedelta(days=1)
    manifest = export(feedback, ExportConfig("dpo", since=future), tmp_path / "none", actor="test")
    assert manifest.counts == {"train": 0, "eval": 0} and manifest.window["since"] == future.isoformat()


def test_a_cut_off_answer_is_no_training_example(sessions, tmp_path):
    """Issue 19, 5: an answer cut off by a page reload (stored as interrupted) is no example of an
    answer, whatever its rating: the KTO export leaves it out and says why."""
    conversation, answer, whole = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store_event(sessions, schemas.MessageEvent(conversation_id=conversation, user="s", role="user",
                                               content="What is BMI?"))
    store_event(sessions, schemas.MessageEvent(event_id=answer, conversation_id=conversation, user="s",
                                               role="assistant", content="Weight divided", interrupted=True))
    store_event(sessions, schemas.RatingEvent(message_id=answer, user="s", thumbs="up"))
    store_event(sessions, schemas.MessageEvent(event_id=whole, conversation_id=conversation, user="s", role="assistant",
                                          content="Weight divided by height squared."))
    store_event(sessions, schemas.RatingEvent(message_id=whole, user="s", thumbs="up"))
    manifest = export(sessions, ExportConfig("kto", eval_fraction=0), tmp_path / "kto", actor="test")
    assert [r["completion"][0]["content"] for r in _rows(tmp_path / "kto")] == ["Weight divided by height squared."]
    assert manifest.dropped == {"rating of an answer cut off before its end": 1}
