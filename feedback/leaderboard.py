"""A leaderboard of every version clinicians have compared (adapter versions and the base model):
Bradley-Terry ratings from their stored side-by-side judgments, with bootstrap intervals, as Chatbot
Arena rates models (issue 32, 6).

Each judgment of two different versions is one game: the chosen answer's version wins; a tie, and
"both bad", count half a win to each (neither was preferred: Arena's "tie (bothbad)"). Gold items
(seed answers whose right choice is known) and items whose two answers come from one version rate
nobody. Ratings are on the Elo scale, anchored so the base model (or, without it, the version with
the most games) reads 1000; a small ridge on the strengths keeps a version that won every game
finite. Intervals: the fit on comparisons resampled with replacement.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.store import Comparison, ReviewItem

SCALE = 400 / math.log(10)  # Elo points per unit of log-strength
RIDGE = 0.01  # on the log-strengths: negligible with data, keeps an unbeaten version finite
WIN = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # version A's score


@dataclass(frozen=True)
class Game:
    a: str
    b: str
    score: float  # a's: 1 won, 0.5 tie or both bad, 0 lost
    category: str


@dataclass(frozen=True)
class Standing:
    version: str
    rating: float
    low: float
    high: float
    games: int
    wins: float  # ties count half


@dataclass(frozen=True)
class Leaderboard:
    standings: list[Standing]  # best first
    games: int
    anchor: str | None
    confidence: float
    category: str | None


def stored_games(sessions: sessionmaker[Session]) -> list[Game]:
    """Every clinician's judgment of two different versions, gold items left out; ``category`` is the
    item's prompt origin (a student's question or a seed question)."""
    with sessions() as session:
        rows = session.execute(
            select(Comparison.version_a, Comparison.version_b, Comparison.choice, ReviewItem.prompt_origin)
            .join(ReviewItem, ReviewItem.id == Comparison.review_item_id, isouter=True)
            .where(Comparison.version_a != Comparison.version_b)
            .where((ReviewItem.is_gold.is_(None)) | (ReviewItem.is_gold.is_(False)))
            .order_by(Comparison.id)).all()
    return [Game(a, b, WIN[choice], origin or "unknown") for a, b, choice, origin in rows if choice in WIN]


def fit(games: list[Game], versions: list[str]) -> np.ndarray:
    """Bradley-Terry log-strengths of ``versions`` (maximum likelihood with a small ridge)."""
    index = {name: i for i, name in enumerate(versions)}
    pairs: Counter[tuple[int, int]] = Counter()
    wins: Counter[tuple[int, int]] = Counter()
    for game in games:
        key = (index[game.a], index[game.b])
        pairs[key] += 1
        wins[key] += game.score
    left = np.array([i for i, _ in pairs])
    right = np.array([j for _, j in pairs])
    played = np.array([pairs[k] for k in pairs], dtype=float)
    won = np.array([wins[k] for k in pairs], dtype=float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = theta[left] - theta[right]
        p = 1 / (1 + np.exp(-margin))
        nll = -(won * np.log(p + 1e-12) + (played - won) * np.log(1 - p + 1e-12)).sum() + RIDGE * (theta @ theta) / 2
        step = played * p - won  # d(nll)/d(margin)
        grad = np.bincount(left, step, len(versions)) - np.bincount(right, step, len(versions)) + RIDGE * theta
        return float(nll), grad

    return minimize(loss, np.zeros(len(versions)), jac=True, method="L-BFGS-B").x


def leaderboard(sessions: sessionmaker[Session], *, base: str | None = None, category: str | None = None,
                rounds: int = 200, confidence: float = 0.9, seed: int = 0,
                games: list[Game] | None = None) -> Leaderboard:
    """Ratings of every version in the stored comparisons (``games``: those already read with
    ``stored_games``; ``category``: only items of that prompt origin), with ``confidence`` bootstrap
    intervals over ``rounds`` resamples; ``base`` names the base model, which reads 1000."""
    games = [g for g in (stored_games(sessions) if games is None else games)
             if category is None or g.category == category]
    played = Counter([g.a for g in games] + [g.b for g in games])
    versions = sorted(played)
    if not games:
        return Leaderboard([], 0, None, confidence, category)
    anchor = base if base in played else played.most_common(1)[0][0]
    origin = versions.index(anchor)

    def ratings(sample: list[Game]) -> np.ndarray:
        theta = fit(sample, versions)
        return 1000 + SCALE * (theta - theta[origin])

    point = ratings(games)
    rng = np.random.default_rng(seed)
    draws = np.array([ratings([games[i] for i in rng.integers(0, len(games), len(games))]) for _ in range(rounds)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, tail, axis=0), np.quantile(draws, 1 - tail, axis=0)
    won = Counter()
    for g in games:
        won[g.a] += g.score
        won[g.b] += 1 - g.score
    standings = [Standing(v, float(point[i]), float(low[i]), float(high[i]), played[v], won[v])
                 for i, v in enumerate(versions)]
    standings.sort(key=lambda s: -s.rating)
    return Leaderboard(standings, len(games), anchor, confidence, category)
