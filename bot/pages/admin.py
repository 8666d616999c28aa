"""The admin tab: adapter versions with their reports and the confirmed promote / reject / retire /
roll back, training runs, feedback volume and annotator agreement, and dataset exports."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from bot.admin import Admin
from bot.errors import UserError
from bot.pages import Require

def handout(path: str | None) -> str | None:
    """A copy of ``path`` for Gradio to serve. Gradio serves every file under ``allowed_paths`` to
    anyone signed in, students included, so careloop's home (exports, run snapshots holding
    clinicians' corrections) is never one: a handler hands out a copy (mode 0600) put straight into
    Gradio's cache (the bot's private ``gradio-cache``, see ``bot.app``) under a name no one can
    guess. Gradio serves it from there without a second copy and deletes it after
    CARELOOP_BOT_DOWNLOAD_SECONDS."""
    if path is None:
        return None
    folder = Path(get_upload_folder()) / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    return shutil.copy(path, folder)


def build_admin(admin: Admin, require: Require) -> gr.Tab:
    with gr.Tab("Admin", id="admin", visible=False, elem_id="tab-admin") as tab:
        admin_message = gr.Markdown(elem_id="admin-message")
        with gr.Tab("Adapter versions"):
            versions = gr.Dataframe(interactive=False, elem_id="versions", wrap=True)
            with gr.Row():
                version = gr.Dropdown([], label="Version", elem_id="version-select", scale=2)
                action_reason = gr.Textbox(label="Reason (reject / roll back)", scale=3)
            with gr.Row():
                action_buttons = {action: gr.Button(label, size="sm", elem_id=f"action-{action}",
                                                    variant="stop" if action in ("reject", "rollback")
                                                    else "secondary")
                                  for action, label in (("promote", "Promote"), ("reject", "Reject"),
                                                        ("retire", "Retire"), ("rollback", "Roll back live"))}
            pending_action = gr.State("")
            with gr.Group(visible=False, elem_id="confirm-panel") as confirm_panel:
                confirm_text = gr.Markdown()
                with gr.Row():
                    confirm = gr.Button("Confirm", variant="stop", size="sm", elem_id="action-confirm")
                    cancel = gr.Button("Cancel", size="sm", elem_id="action-cancel")
            report = gr.Markdown(elem_id="version-report")
            report_figure = gr.Image(label="Evaluation tracks", type="filepath", interactive=False, visible=False)
        with gr.Tab("Training runs"):
            runs = gr.Dataframe(interactive=False, elem_id="runs", wrap=True)
            with gr.Row():
                train = gr.Button("Start a training run", elem_id="train-start")
                refresh_runs = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
        with gr.Tab("Feedback"):
            volume = gr.LinePlot(x="day", y="count", color="kind", title="Feedback per day (30 days)",
                                 elem_id="volume")
            per_annotator = gr.BarPlot(x="annotator", y="judgments", title="Judgments per annotator",
                                       elem_id="per-annotator")
            agreement = gr.Markdown(elem_id="agreement")
            annotators = gr.Dataframe(interactive=False, elem_id="annotators")
        with gr.Tab("Export"):
            with gr.Row():
                export_kind = gr.Radio(["sft", "dpo", "kto"], value="dpo", label="Dataset")
                export_format = gr.Radio(["jsonl", "parquet", "hf"], value="jsonl", label="Format")
            export_button = gr.Button("Export", elem_id="export")
            export_file = gr.File(label="Download (zip with the manifest)", elem_id="export-file")

    def overview(request: gr.Request) -> list[Any]:
        require(request, "admin")
        frame, summary = admin.annotators()
        return [admin.versions(), gr.Dropdown(choices=admin.version_names()), admin.runs(), admin.volume(),
                frame, frame, summary]

    tab.select(overview, None, [versions, version, runs, volume, per_annotator, annotators, agreement],
               api_name="admin_overview")

    def refreshed_runs(request: gr.Request):
        require(request, "admin")
        return admin.runs()

    refresh_runs.click(refreshed_runs, None, [runs], api_name="admin_runs")

    def show_report(name: str | None, request: gr.Request) -> tuple[str, gr.Image]:
        require(request, "admin")
        try:
            text, figure = admin.report(name)
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip()
        return text, gr.Image(value=handout(figure), visible=figure is not None)

    version.change(show_report, [version], [report, report_figure], api_name="admin_report")

    def ask_to_confirm(action: str):
        def handler(name: str | None, request: gr.Request) -> list[Any]:
            require(request, "admin")
            try:
                text = admin.confirmation(action, name)
            except UserError as exc:
                gr.Warning(str(exc))
                return [gr.skip()] * 3
            return [action, gr.Group(visible=True), f"**Confirm:** {text}"]
        return handler

    for action, button in action_buttons.items():
        button.click(ask_to_confirm(action), [version], [pending_action, confirm_panel, confirm_text],
                     api_name=False)

    def confirmed(action: str, name: str | None, why: str, request: gr.Request) -> list[Any]:
        viewer = require(request, "admin")
        try:
            done = admin.act(viewer, action, name, why)
        except UserError as exc:
            gr.Warning(str(exc))
            return [gr.skip()] * 5
        return ["", gr.Group(visible=False), done, admin.versions(), gr.Dropdown(choices=admin.version_names())]

    confirm.click(confirmed, [pending_action, version, action_reason],
                  [pending_action, confirm_panel, admin_message, versions, version], api_name="admin_act")
    cancel.click(lambda: ["", gr.Group(visible=False)], None, [pending_action, confirm_panel], api_name=False)

    def start_training(request: gr.Request) -> Any:  # the runs table
        viewer = require(request, "admin")
        try:  # a toast, not the page's message line: it would still say "queued" long after the run ended
            gr.Info(admin.start_training(viewer))
        except UserError as exc:
            gr.Warning(str(exc))
        return admin.runs()

    train.click(start_training, None, [runs], api_name="admin_train")

    def export(kind: str, fmt: str, request: gr.Request) -> str:
        viewer = require(request, "admin")
        try:
            return handout(admin.export(viewer, kind, fmt))
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip()

    export_button.click(export, [export_kind, export_format], [export_file], api_name="admin_export")
    return tab
