"""Annotator quality figures on labels stored through the real ingest path."""

from __future__ import annotations

import pytest
from support import label

from feedback import review_queue
from feedback.quality import annotator_quality


def _item(sessions, gold_choice: str | None = None) -> int:
    return review_queue.add_item(sessions, "Is 140/90 high?", "Yes, stage 2.", "No.", "x", "y", labels_needed=3,
                                 prompt_origin="seed", gold_choice=gold_choice)


def test_counts_gold_accuracy_and_pairwise_kappa(sessions):
    items = [_item(sessions) for _ in range(4)]
    for item, (first, second) in zip(items, [("a", "a"), ("b", "b"), ("a", "b"), ("tie", "tie")], strict=True):
        label(sessions, item, "nurse.a", first, seconds_spent=30)
        label(sessions, item, "nurse.b", second, seconds_spent=50)
    gold = [_item(sessions, gold_choice="a") for _ in range(3)]
    for item, choice in zip(gold, ["a", "a", "b"], strict=True):
        label(sessions, item, "nurse.a", choice)
    review_queue.skip(sessions, _item(sessions), "nurse.b")

    report = annotator_quality(sessions)
    stats = report.by_annotator()
    assert (stats["nurse.a"].labels, stats["nurse.a"].gold_labels, stats["nurse.a"].gold_correct) == (7, 3, 2)
    assert stats["nurse.a"].gold_accuracy == pytest.approx(2 / 3)
    assert stats["nurse.b"].gold_accuracy is None and stats["nurse.b"].skipped == 1
    assert stats["nurse.b"].median_seconds == 50
    assert report.overlapping_items == 4  # gold items do not count towards agreement
    # By hand: observed 3/4; chance 0.5*0.25 + 0.25*0.5 + 0.25*0.25 = 0.3125; (0.75-0.3125)/0.6875
    kappa, shared = report.kappas[("nurse.a", "nurse.b")]
    assert shared == 4 and kappa == pytest.approx(0.63636, abs=1e-4)
    assert report.alpha is not None and 0.5 < report.alpha < 0.75
    # Each agreed with the other on 3 of the 4 shared items; gold items do not count.
    assert stats["nurse.a"].agreement == pytest.approx(0.75) and stats["nurse.b"].agreement == pytest.approx(0.75)


def test_perfect_and_absent_agreement(sessions):
    assert annotator_quality(sessions).alpha is None  # nothing labelled yet
    items = [_item(sessions) for _ in range(3)]
    for item, choice in zip(items, ["a", "b", "both_bad"], strict=True):
        for annotator in ("dr.x", "dr.y", "dr.z"):
            label(sessions, item, annotator, choice)
    report = annotator_quality(sessions)
    assert report.alpha == pytest.approx(1.0)
    assert all(kappa == pytest.approx(1.0) for kappa, _ in report.kappas.values()) and len(report.kappas) == 3


def test_win_rate_of_one_version_over_another(sessions):
    from feedback.quality import win_rate

    for version_a, version_b, choice in [("med-v0002", "med-v0001", "a"), ("med-v0001", "med-v0002", "b"),
                                       ("med-v0001", "med-v0002", "a"), ("med-v0002", "med-v0001", "tie"),
                                       ("med-v0002", "med-v0001", "both_bad"), ("med-v0003", "med-v0001", "a")]:
        label(sessions, None, "dr.x", choice, version_a=version_a, version_b=version_b)
    result = win_rate(sessions, "med-v0002", "med-v0001")
    assert (result.wins, result.judgments, result.rate) == (2.5, 4, 0.625)
    assert win_rate(sessions, "med-v0002", "med-v0009").rate is None
