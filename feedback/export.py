"""TRL-ready datasets from what clinicians said, with a manifest that pins down the snapshot.

Kinds (conversational form, as TRL's trainers take them):
- ``sft``: ``messages`` - corrected answers and the answers clinicians preferred,
- ``dpo``: ``prompt`` / ``chosen`` / ``rejected`` - each judged item's majority choice, and every
  correction as the corrected answer over the original,
- ``kto``: ``prompt`` / ``completion`` / ``label`` - preferred (True) and rejected (False) answers,
  thumbs up/down on chat answers, corrections.

A row whose answers were written from library passages (a review item generated with retrieval
on, a chat answer corrected or rated) carries them as ``passages``, as numbered in the answers'
prompt; its ``prompt`` stays the bare question (the trainer grounds it: ``trainer.snapshot``).

Rules, each counted in the manifest's ``dropped``: labels from annotators whose gold accuracy is
below the threshold are dropped; an item's labels are combined by majority (``agreement`` is the
winner's share); ties, split votes and "both bad" without a correction give no preference pair.
Rows are split by prompt (a hash), so the same prompt is never in both train and eval.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from careloop import audit
from careloop.db import transaction
from careloop.private import private_dir, restrict_tree
from feedback.quality import annotator_quality
from feedback.schemas import AXES  # noqa: F401 - re-exported: the trainer reads feedback through this module only
from feedback.store import Comparison, Correction, Message, Rating, ReviewItem

Kind = Literal["sft", "dpo", "kto"]
Format = Literal["jsonl", "parquet", "hf"]


@dataclass(frozen=True)
class ExportConfig:
    kind: Kind
    since: datetime | None = None
    until: datetime | None = None
    eval_fraction: float = 0.1
    min_gold_accuracy: float = 0.6
    min_gold_labels: int = 3  # fewer gold labels than this: the annotator is not judged yet


@dataclass
class Manifest:
    kind: str
    snapshot_sha256: str
    created_at: str
    window: dict[str, str | None]
    counts: dict[str, int]
    dropped: dict[str, int]
    annotators: list[str]
    excluded_annotators: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)


def export(sessions: sessionmaker[Session], config: ExportConfig, out: Path, fmt: Format = "jsonl", *,
           actor: str) -> Manifest:
    """Write the datasets and ``manifest.json`` to ``out``; the export is recorded in the audit log."""
    rows, dropped, annotators, excluded, window = build_rows(sessions, config)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for row in rows:
        splits["eval" if in_eval(_prompt_text(row), config.eval_fraction) else "train"].append(row)
    lines = {name: [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in split]
             for name, split in splits.items()}
    digest = hashlib.sha256()
    for name in ("train", "eval"):
        digest.update(f"{name}\n".encode())
        for line in lines[name]:
            digest.update(line.encode() + b"\n")
    manifest = Manifest(
        kind=config.kind, snapshot_sha256=digest.hexdigest(), created_at=datetime.now(UTC).isoformat(),
        window={"since": _iso(config.since), "until": _iso(config.until),
                "first_event": _iso(window[0]), "last_event": _iso(window[1])},
        counts={name: len(split) for name, split in splits.items()}, dropped=dict(sorted(dropped.items())),
        annotators=sorted(annotators), excluded_annotators=excluded,
        config={**asdict(config), "since": _iso(config.since), "until": _iso(config.until), "format": fmt})
    created = not out.exists()
    private_dir(out)
    try:
        _write(out, splits, lines, fmt)
        (out / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        restrict_tree(out)  # every judgment is in here: the owner's alone
    except OSError:  # a full disk: no half-written export left behind, nothing in the audit log
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    with transaction(sessions) as session:
        audit.record(session, actor, "feedback.export", str(out), kind=config.kind,
                     snapshot=manifest.snapshot_sha256, counts=manifest.counts)
    return manifest


def in_eval(prompt: str, eval_fraction: float) -> bool:
    """Deterministic by prompt text: a prompt always falls on the same side of the split."""
    bucket = int(hashlib.sha256(prompt.strip().lower().encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return bucket < eval_fraction


def labels_since(session: Session, since: datetime) -> int:
    """Training labels that arrived since ``since``: judgments that chose an answer, and corrections
    (what the training schedule counts before it starts a run)."""
    return (session.scalar(select(func.count()).select_from(Comparison).where(
        Comparison.created_at >= since, Comparison.choice.in_(("a", "b"))))
        + session.scalar(select(func.count()).select_from(Correction).where(Correction.created_at >= since)))


def build_rows(sessions: sessionmaker[Session], config: ExportConfig):  # noqa: ANN201 - internal tuple
    dropped: Counter[str] = Counter()
    excluded = {}
    for stats in annotator_quality(sessions).annotators:
        accuracy = stats.gold_accuracy
        if stats.gold_labels >= config.min_gold_labels and accuracy is not None and accuracy < config.min_gold_accuracy:
            excluded[stats.annotator] = (f"gold accuracy {accuracy:.2f} < {config.min_gold_accuracy:.2f} "
                                         f"over {stats.gold_labels} gold items")
    with sessions() as session:
        comparisons = [c for c in session.scalars(_window(select(Comparison), Comparison, config)
                                                  .order_by(Comparison.id))]
        corrections = list(session.scalars(_window(select(Correction), Correction, config).order_by(Correction.id)))
        ratings = list(session.scalars(_window(select(Rating), Rating, config).order_by(Rating.id)))
        rated = {m.event_id: m for m in session.scalars(
            select(Message).where(Message.event_id.in_([r.message_id for r in ratings])))}
        questions = _questions(session, list(rated.values()))
        gold_items = set(session.scalars(select(ReviewItem.id).where(ReviewItem.is_gold.is_(True))))
        item_passages = dict(session.execute(select(ReviewItem.id, ReviewItem.passages).where(
            ReviewItem.id.in_({c.review_item_id for c in comparisons if c.review_item_id is not None}))).all())
        corrected_passages = dict(session.execute(select(Message.event_id, Message.passages).where(
            Message.event_id.in_({c.message_id for c in corrections if c.message_id is not None}))).all())
    annotators = set()
    times = [r.created_at for r in (*comparisons, *corrections, *ratings)]

    # Gold items measure annotators; they are not training data.
    kept = []
    for label in comparisons:
        if label.review_item_id in gold_items:
            dropped["gold item (measures annotators)"] += 1
        elif label.annotator in excluded:
            dropped["label from excluded annotator"] += 1
        else:
            kept.append(label)
            annotators.add(label.annotator)
    groups: dict[Any, list[Comparison]] = defaultdict(list)
    for label in kept:
        groups[label.review_item_id if label.review_item_id is not None else f"event:{label.event_id}"].append(label)

    rows: list[dict] = []
    for labels in groups.values():
        first = labels[0]
        votes = Counter(label.choice for label in labels)
        (winner, top), *rest = votes.most_common()
        if rest and rest[0][1] == top:
            dropped["split vote"] += 1
            continue
        agreement = round(top / len(labels), 3)
        corrected = next((label.corrected_answer for label in reversed(labels) if label.corrected_answer), None)
        meta = {"origin": "comparison", "agreement": agreement, "label_count": len(labels),
                **_passages(item_passages.get(first.review_item_id))}
        if winner in ("a", "b"):
            chosen, rejected = ((first.response_a, first.response_b) if winner == "a"
                                else (first.response_b, first.response_a))
            rows += _rows(config.kind, first.prompt, chosen, [rejected], meta)
            if corrected:
                rows += _rows(config.kind, first.prompt, corrected, [rejected],
                              {**meta, "origin": "comparison_correction"})
        elif winner == "tie":
            dropped["tie: no preference"] += 1
        elif corrected:  # both bad, but a clinician wrote a better answer
            rows += _rows(config.kind, first.prompt, corrected, [first.response_a, first.response_b],
                          {**meta, "origin": "comparison_correction"})
        else:
            dropped["both bad, no correction"] += 1
            if config.kind == "kto":
                rows += [_kto(first.prompt, text, False, meta) for text in (first.response_a, first.response_b)]

    for correction in corrections:
        if correction.annotator in excluded:
            dropped["correction from excluded annotator"] += 1
            continue
        annotators.add(correction.annotator)
        rows += _rows(config.kind, correction.prompt, correction.corrected, [correction.original],
                      {"origin": "correction", "agreement": 1.0, "label_count": 1,
                       **_passages(corrected_passages.get(correction.message_id))})

    for rating in ratings:
        message = rated.get(rating.message_id)
        question = questions.get(rating.message_id)
        if message is None or question is None:
            dropped["rating of an unknown answer"] += 1
            continue
        if message.interrupted:  # a cut-off answer is no example of an answer, good or bad
            dropped["rating of an answer cut off before its end"] += 1
            continue
        if message.screened:  # the request screen's refusal, not an answer of the model's
            dropped["rating of the request screen's refusal"] += 1
            continue
        if config.kind == "kto":
            rows.append(_kto(question, message.content, rating.thumbs == "up",
                             {"origin": "rating", **_passages(message.passages)}))
        else:
            dropped["rating (used by kto only)"] += 1
    return rows, dropped, annotators, excluded, (min(times, default=None), max(times, default=None))


def _rows(kind: Kind, prompt: str, chosen: str, rejected: list[str], meta: dict) -> list[dict]:
    """One preferred answer over one or more worse ones, in the shape of ``kind``."""
    if kind == "dpo":
        return [{"prompt": _user(prompt), "chosen": _assistant(chosen), "rejected": _assistant(worse), **meta}
                for worse in rejected]
    if kind == "kto":
        return [_kto(prompt, chosen, True, meta)] + [_kto(prompt, worse, False, meta) for worse in rejected]
    return [{"messages": _user(prompt) + _assistant(chosen), **meta}]


def _passages(passages: list[dict] | None) -> dict:
    """``{"passages": passages}`` when the answers were written from some, else nothing."""
    return {"passages": passages} if passages else {}


def _kto(prompt: str, completion: str, label: bool, meta: dict) -> dict:
    return {"prompt": _user(prompt), "completion": _assistant(completion), "label": label, **meta}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _prompt_text(row: dict) -> str:
    return (row.get("prompt") or row["messages"])[0]["content"]


def _questions(session: Session, answers: list[Message]) -> dict[Any, str]:
    """For each rated answer, the student question just before it in its conversation."""
    found = {}
    for answer in answers:
        question = session.scalar(select(Message.content).where(
            Message.conversation_id == answer.conversation_id, Message.role == "user", Message.id < answer.id)
            .order_by(Message.id.desc()).limit(1))
        if question is not None:
            found[answer.event_id] = question
    return found


def _window(query, table, config: ExportConfig):  # noqa: ANN001, ANN202 - a Select
    if config.since is not None:
        query = query.where(table.created_at >= config.since)
    if config.until is not None:
        query = query.where(table.created_at < config.until)
    return query


def _write(out: Path, splits: dict[str, list[dict]], lines: dict[str, list[str]], fmt: Format) -> None:
    if fmt == "jsonl":
        for name, split_lines in lines.items():
            (out / f"{name}.jsonl").write_text("".join(line + "\n" for line in split_lines))
        return
    from datasets import Dataset, DatasetDict

    data = {name: Dataset.from_list(rows) for name, rows in splits.items() if rows}
    features = next(iter(data.values())).features if data else None
    # An empty split keeps the other's columns, so it loads like any other split.
    data = DatasetDict({name: data[name] if name in data else Dataset.from_dict(
        {column: [] for column in features or {}}, features=features) for name in splits})
    if fmt == "parquet":
        for name, dataset in data.items():
            dataset.to_parquet(out / f"{name}.parquet")
    else:  # datasets cannot load back an empty saved split: leave empty ones out (counts say 0)
        DatasetDict({name: dataset for name, dataset in data.items() if len(dataset)}).save_to_disk(out / "dataset")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
