"""The leaderboard (issue 32, 6): Bradley-Terry ratings of the versions clinicians compared, from
judgments stored through the real ingest path; through `careloop leaderboard` and the Admin page."""

from __future__ import annotations

import numpy as np
import pytest
from support import label

from feedback import review_queue
from feedback.leaderboard import SCALE, leaderboard, stored_games

# True log-strengths: the base model, a better version and a much better one.
TRUTH = {"base-model": 0.0, "med-v0001": 0.5, "med-v0002": 1.2}


def _simulated(sessions, games: int, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    names = list(TRUTH)
    for _ in range(games):
        a, b = rng.choice(names, size=2, replace=False)
        p_a = 1 / (1 + np.exp(TRUTH[b] - TRUTH[a]))
        label(sessions, None, "dr.x", "a" if rng.random() < p_a else "b", version_a=str(a), version_b=str(b))


def test_ratings_recover_known_strengths_with_intervals_that_cover_them(sessions):
    _simulated(sessions, 600)
    board = leaderboard(sessions, base="base-model", rounds=300)
    assert [s.version for s in board.standings] == ["med-v0002", "med-v0001", "base-model"]
    assert board.games == 600 and board.anchor == "base-model"
    by_name = {s.version: s for s in board.standings}
    assert by_name["base-model"].rating == pytest.approx(1000) and sum(s.games for s in board.standings) == 1200
    for name, strength in TRUTH.items():
        standing, true_rating = by_name[name], 1000 + SCALE * strength
        assert standing.low <= true_rating <= standing.high, (name, true_rating, standing)
        if name != "base-model":
            assert standing.high - standing.low < 250, "600 judgments tell these versions apart"
    # The best version's interval lies above the base model's rating: the leaderboard can tell them apart.
    assert by_name["med-v0002"].low > 1000


def test_ties_and_both_bad_count_half_gold_and_one_version_items_rate_nobody(sessions):
    for choice in ("tie", "both_bad", "a", "b"):
        label(sessions, None, "dr.x", choice, version_a="med-v0002", version_b="med-v0001")
    gold = review_queue.add_item(sessions, "Is 140/90 high?", "Yes.", "No.", "med-v0009", "med-v0001",
                                 labels_needed=1, prompt_origin="seed", gold_choice="a")
    label(sessions, gold, "dr.x", "a")
    label(sessions, None, "dr.y", "a", version_a="med-v0001", version_b="med-v0001")
    assert len(stored_games(sessions)) == 4
    board = leaderboard(sessions, base="med-v0001", rounds=50)
    assert {s.version: (s.games, s.wins) for s in board.standings} == {"med-v0002": (4, 2.0), "med-v0001": (4, 2.0)}
    assert all(s.rating == pytest.approx(1000, abs=1e-3) for s in board.standings), "even games: equal ratings"


def test_an_unbeaten_version_gets_a_finite_rating_and_no_judgment_gives_an_empty_board(sessions):
    assert leaderboard(sessions).standings == []
    for _ in range(5):
        label(sessions, None, "dr.x", "a", version_a="med-v0003", version_b="base-model")
    board = leaderboard(sessions, base="base-model", rounds=50)
    best = board.standings[0]
    assert best.version == "med-v0003" and 1000 < best.rating < 3000 and np.isfinite(best.high)


def test_per_origin_boards_and_the_command(sessions, cli, database_url, tmp_path):
    student = review_queue.add_item(sessions, "My question", "A", "B", "med-v0002", "base-model",
                                    labels_needed=3, prompt_origin="student")
    for annotator in ("dr.x", "dr.y", "dr.z"):
        label(sessions, student, annotator, "a")
    label(sessions, None, "dr.x", "b", version_a="med-v0002", version_b="base-model")
    assert leaderboard(sessions, category="student", rounds=20).games == 3
    assert leaderboard(sessions, category="seed", rounds=20).games == 0
    done = cli("leaderboard", "--by-origin", "--rounds", "50",
               env={"CARELOOP_DATABASE_URL": database_url, "CARELOOP_HOME": str(tmp_path / "home"),
                    "CARELOOP_BASE_MODEL": "base-model"})
    assert done.returncode == 0, done.stderr
    assert "leaderboard: 4 judgments, base-model = 1000" in done.stdout
    assert "leaderboard (student questions): 3 judgments" in done.stdout
    assert "no clinicians' comparisons of two versions yet (seed questions)" in done.stdout
    assert "med-v0002" in done.stdout.split("base-model = 1000")[1].split("base-model")[0], "the winner ranks first"
