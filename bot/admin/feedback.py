"""The Feedback tab: what clinicians and students sent per day, judgments per annotator, how far the
annotators agree, and the leaderboard their comparisons make of the versions. The figures come from
feedback's own functions (``feedback.activity``, ``feedback.quality``, ``feedback.leaderboard``), never
its tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import gradio as gr
import pandas as pd

from bot.admin.shared import AdminServices, AdminTab, Follow
from careloop.base_model import base_model_name
from feedback.activity import ACTIVITY_KINDS, daily_counts
from feedback.leaderboard import Leaderboard, leaderboard, stored_games
from feedback.quality import annotator_quality

VOLUME_DAYS = 30


LEADERBOARD_COLUMNS = ["rank", "version", "rating", "interval (90%)", "judgments", "wins (ties half)"]


@dataclass
class Feedback:
    services: AdminServices
    _board: tuple[int, Leaderboard] | None = None  # (games it was fitted on, the board): the tab refreshes often

    def leaderboard(self) -> tuple[pd.DataFrame, Any, str]:
        """The versions clinicians compared, best first, as a table, a plot of ratings with their intervals,
        and a sentence saying what they rest on."""
        games = stored_games(self.services.sessions)
        if self._board is None or self._board[0] != len(games):  # refitted (with its bootstrap) only on news
            self._board = (len(games), leaderboard(self.services.sessions, games=games,
                                                   base=base_model_name(self.services.settings)))
        board = self._board[1]
        frame = pd.DataFrame([{"rank": rank, "version": s.version, "rating": round(s.rating),
                               "interval (90%)": f"{s.low:.0f} to {s.high:.0f}", "judgments": s.games,
                               "wins (ties half)": s.wins} for rank, s in enumerate(board.standings, start=1)],
                             columns=LEADERBOARD_COLUMNS)
        if not board.games:
            return frame, None, "No clinician has compared two versions yet."
        return frame, _ratings_plot(board), (
            f"Bradley-Terry ratings from {board.games} clinicians' judgments of two versions (a tie or \"both bad\" "
            f"is half a win each; gold items left out), `{board.anchor}` at 1000, {board.confidence:.0%} bootstrap "
            "intervals. Also `careloop leaderboard --by-origin`.")

    def volume(self) -> pd.DataFrame:
        """Events per day over the last VOLUME_DAYS days (today included), by kind; a day without events
        counts 0, so the line plot draws lines even when everything happened today (one point per
        series draws nothing)."""
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=back) for back in range(VOLUME_DAYS - 1, -1, -1)]
        counts = daily_counts(self.services.sessions, days[0])
        rows = [{"day": pd.Timestamp(day), "kind": kind, "count": counts[(day, kind)]}
                for day in days for kind in ACTIVITY_KINDS]
        return pd.DataFrame(rows, columns=["day", "kind", "count"])

    def annotators(self) -> tuple[pd.DataFrame, str]:
        """A row per annotator, and the agreement between them in a sentence."""
        report = annotator_quality(self.services.sessions)
        rows = [{"annotator": s.annotator, "judgments": s.labels, "skipped": s.skipped,
                 "gold accuracy": _percent(s.gold_accuracy, "n/a (no gold item judged yet)"),
                 "agreement": _percent(s.agreement, "n/a (not enough shared items)"),
                 "median seconds": s.median_seconds if s.median_seconds is not None else "n/a"}
                for s in report.annotators]
        frame = pd.DataFrame(rows, columns=["annotator", "judgments", "skipped", "gold accuracy", "agreement",
                                            "median seconds"])
        alpha = f"{report.alpha:.2f}" if report.alpha is not None else "n/a (no item has two labels yet)"
        kappas = ", ".join(f"{a} / {b}: {k:.2f} over {n}" for (a, b), (k, n) in report.kappas.items()
                           if k is not None) or "none yet"
        summary = (f"Krippendorff's alpha over {report.overlapping_items} items judged by two or more: **{alpha}**. "
                   f"Cohen's kappa per pair: {kappas}.")
        return frame, summary


def _ratings_plot(board: Leaderboard):  # noqa: ANN202 - a matplotlib figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(reversed(board.standings))  # best at the top
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(shown) + 1.2))
    ratings = [s.rating for s in shown]
    axes.errorbar(ratings, range(len(shown)), fmt="o",
                  xerr=[[s.rating - s.low for s in shown], [s.high - s.rating for s in shown]])
    axes.axvline(1000, color="grey", linewidth=1)
    axes.set_yticks(range(len(shown)), [s.version for s in shown])
    axes.set_xlabel(f"rating ({board.anchor} = 1000)")
    figure.tight_layout()
    plt.close(figure)
    return figure


def count_axis(counts: pd.Series) -> list[float]:
    """The y range of a plot of counts: from 0 (Gradio's plots start at the smallest value, so one
    count alone draws a bar of no height) to at least 10, so the ticks fall on whole numbers."""
    return [0, max(10, int(counts.max())) if len(counts) else 10]


def _percent(value: float | None, missing: str) -> str:
    return f"{value:.0%}" if value is not None else missing


def build_feedback_tab(feedback: Feedback) -> AdminTab:
    """The tab; its figures are drawn when it opens, and again every few seconds while it stays open
    (no handler of its own: the admin page's)."""
    with gr.Tab("Feedback") as tab:
        # y_axis_format "d": counts are whole numbers ("3", not "3.000000").
        volume = gr.LinePlot(x="day", y="count", color="kind", title="Feedback per day (30 days)",
                             y_axis_format="d", elem_id="volume")
        per_annotator = gr.BarPlot(x="annotator", y="judgments", title="Judgments per annotator",
                                   y_axis_format="d", elem_id="per-annotator")
        agreement = gr.Markdown(elem_id="agreement")
        annotators = gr.Dataframe(interactive=False, elem_id="annotators")
        gr.Markdown("#### Leaderboard (clinicians' comparisons)")
        board_note = gr.Markdown(elem_id="leaderboard-note")
        board_plot = gr.Plot(show_label=False, elem_id="leaderboard-plot")
        board = gr.Dataframe(interactive=False, elem_id="leaderboard")

    def view() -> list[Any]:
        frame, summary = feedback.annotators()
        volume_frame = feedback.volume()
        standings, plot, note = feedback.leaderboard()
        return [gr.LinePlot(value=volume_frame, y_lim=count_axis(volume_frame["count"])),
                gr.BarPlot(value=frame, y_lim=count_axis(frame["judgments"])), frame, summary, standings, plot,
                note]

    shown = [volume, per_annotator, annotators, agreement, board, board_plot, board_note]
    return AdminTab(tab, shown, view, Follow(shown, view))
