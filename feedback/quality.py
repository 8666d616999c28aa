"""Annotator quality: how much each clinician labelled, how often they matched gold items, and
how well annotators agree on the items they share (Krippendorff's alpha over everyone, Cohen's
kappa per pair), computed with the `krippendorff` and scikit-learn packages."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import combinations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.schemas import CHOICES
from feedback.store import Comparison, ReviewAssignment, ReviewItem


@dataclass(frozen=True)
class AnnotatorStats:
    annotator: str
    labels: int
    skipped: int
    gold_labels: int
    gold_correct: int
    median_seconds: float | None
    agreement: float | None = None  # share of other annotators' labels on the same items that match theirs

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_labels if self.gold_labels else None


@dataclass(frozen=True)
class QualityReport:
    annotators: list[AnnotatorStats]
    overlapping_items: int  # items labelled by two or more annotators
    alpha: float | None  # Krippendorff's alpha (nominal) over overlapping items; None if undefined
    kappas: dict[tuple[str, str], tuple[float | None, int]] = field(default_factory=dict)  # pair -> (kappa, items)

    def by_annotator(self) -> dict[str, AnnotatorStats]:
        return {stats.annotator: stats for stats in self.annotators}


def annotator_quality(sessions: sessionmaker[Session]) -> QualityReport:
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    with sessions() as session:
        labels = list(session.execute(
            select(Comparison.annotator, Comparison.review_item_id, Comparison.choice, Comparison.seconds_spent,
                   ReviewItem.is_gold, ReviewItem.gold_choice)
            .outerjoin(ReviewItem, ReviewItem.id == Comparison.review_item_id).order_by(Comparison.id)))
        skipped = defaultdict(int)
        for annotator in session.scalars(select(ReviewAssignment.annotator).where(ReviewAssignment.skipped.is_(True))):
            skipped[annotator] += 1

    per_annotator: dict[str, list] = defaultdict(list)
    per_item: dict[int, dict[str, str]] = defaultdict(dict)
    for annotator, item_id, choice, seconds, is_gold, gold_choice in labels:
        per_annotator[annotator].append((choice, seconds, bool(is_gold), gold_choice))
        if item_id is not None and not is_gold:
            per_item[item_id][annotator] = choice  # the latest label of an annotator on an item counts

    stats = []
    for annotator, rows in sorted(per_annotator.items()):
        gold = [(choice, expected) for choice, _, is_gold, expected in rows if is_gold]
        seconds = sorted(s for _, s, _, _ in rows if s is not None)
        stats.append(AnnotatorStats(annotator, len(rows), skipped[annotator], len(gold),
                                    sum(choice == expected for choice, expected in gold),
                                    seconds[len(seconds) // 2] if seconds else None))

    shared = {item: votes for item, votes in per_item.items() if len(votes) >= 2}
    stats = [replace(s, agreement=_agreement(s.annotator, shared)) for s in stats]
    coders = sorted({a for votes in shared.values() for a in votes})
    alpha = None
    if shared:
        matrix = np.full((len(coders), len(shared)), np.nan)
        for column, votes in enumerate(shared.values()):
            for annotator, choice in votes.items():
                matrix[coders.index(annotator), column] = CHOICES.index(choice)
        if len(set(matrix[~np.isnan(matrix)].tolist())) > 1:
            alpha = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
        else:
            alpha = 1.0  # everyone always chose the same: perfect, if uninformative, agreement

    kappas = {}
    for first, second in combinations(coders, 2):
        both = [(v[first], v[second]) for v in shared.values() if first in v and second in v]
        if len(both) < 2:
            continue
        left, right = zip(*both, strict=True)
        if len(set(left) | set(right)) == 1:
            kappa = 1.0
        else:
            kappa = float(cohen_kappa_score(left, right, labels=list(CHOICES)))
        kappas[(first, second)] = (None if math.isnan(kappa) else kappa, len(both))
    return QualityReport(stats, len(shared), alpha, kappas)


def _agreement(annotator: str, shared: dict[int, dict[str, str]]) -> float | None:
    pairs = [mine == theirs for votes in shared.values() if (mine := votes.get(annotator)) is not None
             for other, theirs in votes.items() if other != annotator]
    return sum(pairs) / len(pairs) if pairs else None


@dataclass(frozen=True)
class WinRate:
    wins: float  # ties count half
    judgments: int

    @property
    def rate(self) -> float | None:
        return self.wins / self.judgments if self.judgments else None


def win_rate(sessions: sessionmaker[Session], version: str, other: str) -> WinRate:
    """How often clinicians preferred ``version``'s answer over ``other``'s when shown both
    (ties count half; "both bad" says nothing about which is better and is left out)."""
    with sessions() as session:
        rows = session.execute(select(Comparison.version_a, Comparison.version_b, Comparison.choice).where(
            ((Comparison.version_a == version) & (Comparison.version_b == other))
            | ((Comparison.version_a == other) & (Comparison.version_b == version)))).all()
    wins, judged = 0.0, 0
    for version_a, _, choice in rows:
        if choice == "both_bad":
            continue
        judged += 1
        if choice == "tie":
            wins += 0.5
        elif (choice == "a") == (version_a == version):
            wins += 1
    return WinRate(wins, judged)
