"""The Training runs tab: the recent runs with their step, progress and why a version was not
promoted, a run started by hand (one at a time, through the same Celery task as `careloop train`),
and the table followed every few seconds while the tab is open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd
import redis

from bot.access import Viewer
from bot.admin.shared import AdminServices, AdminTab, Follow
from bot.errors import UserError
from bot.pages import Require
from careloop.log import get_logger
from feedback.in_flight import in_flight
from trainer.runs import describe_data, recent_runs
from trainer.schedule import progress, settle_stopped_runs
from trainer.tasks import RunRefused, request_run, requested_run

log = get_logger(__name__)

COLUMNS = ["run", "status", "step", "progress", "eta", "started", "by", "clinicians' data", "version",
           "why not promoted"]


@dataclass
class Runs:
    services: AdminServices

    def table(self) -> pd.DataFrame:
        settings, sessions = self.services.settings, self.services.sessions
        rows = []
        settle_stopped_runs(sessions, settings.redis_url)
        try:
            queued = requested_run(settings.redis_url)
        except redis.RedisError:  # Redis away: the table still shows the stored runs
            queued = None
        if queued is not None:
            rows.append({"run": "", "status": "queued", "step": "", "progress": "", "eta": "",
                         "started": f"{queued.requested_at:%Y-%m-%d %H:%M}", "by": queued.actor,
                         "clinicians' data": "", "version": "", "why not promoted": ""})
        for run in recent_runs(sessions, limit=20):
            done = progress(sessions, run)
            eta = done.eta_label
            decision = run.decision or {}
            reasons = [r for r in decision.get("reasons", []) if not r.startswith("ok ")]
            if run.status == "candidate" and decision.get("verdict") != "inconclusive":
                # passed, with the config's auto_promote off: the admin decides
                reasons = ["the gate passed: promote it yourself on the Adapter versions tab (this run's "
                           "config has auto_promote off)"]
            rows.append({"run": run.id, "status": run.status, "step": done.step_label,
                         "progress": f"{done.percent:.0f}%", "eta": eta, "started": f"{run.started_at:%Y-%m-%d %H:%M}",
                         "by": run.actor, "clinicians' data": describe_data(run.data),
                         "version": run.adapter_version or "",
                         "why not promoted": "; ".join(reasons)[:300]})
        return pd.DataFrame(rows, columns=COLUMNS)

    def note(self, table: pd.DataFrame) -> str:
        parts = []
        if table.empty:
            parts.append("No training runs yet. Beat starts one when enough new clinician judgments have arrived "
                         "(CARELOOP_TRAIN_MIN_NEW_PAIRS), or start one here.")
        elif table["status"].isin(["queued", "running"]).any():
            parts.append("The table follows the run every few seconds while this tab is open.")
        parts.append(self._on_its_way())
        return " ".join(part for part in parts if part)

    def _on_its_way(self) -> str:
        """Feedback submitted but not stored yet: a run started now waits for it (issue 29, 2)."""
        client = redis.Redis.from_url(self.services.settings.redis_url, socket_timeout=2)
        try:
            late = in_flight(client)
        except redis.RedisError:
            return ""
        finally:
            client.close()
        if late.empty:
            return "Every judgment submitted so far is stored."
        return (f"On its way to the store: {late.describe()}; a run started now waits up to "
                f"{self.services.settings.train_feedback_wait_seconds:.0f} s for it.")

    def start(self, viewer: Viewer) -> str:
        """Queue a training run for ``viewer``; UserError if one is queued or running, or the broker is away."""
        try:
            request_run(self.services.settings, self.services.sessions, viewer.username)
        except RunRefused as exc:
            raise UserError(f"Not started: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - redis and kombu raise several transport errors
            raise UserError("Could not queue a training run: the broker is unreachable "
                            f"({exc.__class__.__name__}).") from None
        log.info("training_requested", actor=viewer.username)
        return "Training run queued: the training worker starts it when it is free; the table shows its progress."


def build_runs_tab(runs: Runs, require: Require) -> AdminTab:
    """The tab; the admin page follows its table every few seconds while it is open (``Follow``)."""
    with gr.Tab("Training runs", elem_id="tab-runs") as tab:
        note = gr.Markdown(elem_id="runs-note")
        table = gr.Dataframe(interactive=False, elem_id="runs", wrap=True)
        with gr.Row():
            train = gr.Button("Start a training run", elem_id="train-start")
            refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh")

    def view() -> list[Any]:
        frame = runs.table()
        return [frame, runs.note(frame)]

    def refreshed_runs(request: gr.Request) -> list[Any]:
        require(request, "admin")
        return view()

    refresh.click(refreshed_runs, None, [table, note], api_name="admin_runs")

    def start_training(request: gr.Request) -> list[Any]:  # the runs table
        viewer = require(request, "admin")
        try:  # a toast, not the page's message line: it would still say "queued" long after the run ended
            gr.Info(runs.start(viewer))
        except UserError as exc:
            gr.Warning(str(exc))
        return view()

    train.click(start_training, None, [table, note], api_name="admin_train")
    # Step x/N, percent and ETA move on the page by themselves (the admin page's timer).
    return AdminTab(tab, [table, note], view, Follow([table, note], view))
