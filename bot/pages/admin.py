"""The admin tab: adapter versions with their reports and the confirmed promote / reject / retire /
roll back, training runs (followed while one is queued or running), feedback volume and annotator
agreement, dataset exports, accounts, and the library's documents (uploaded, or removed once
confirmed)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from bot.access import Viewer
from bot.admin import Admin, count_axis
from bot.errors import UserError
from bot.pages import Require
from careloop.accounts import ROLES


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


def discard_uploads(paths: list[str] | None) -> None:
    """Delete uploaded files once read. Gradio keeps every upload in its cache (the bot's private
    ``gradio-cache``) until its sweep CARELOOP_BOT_DOWNLOAD_SECONDS later; a library document is
    read once, into the database, so its upload is deleted at once and uploads do not pile up.
    Only files in Gradio's upload folder are touched."""
    folder = Path(get_upload_folder()).resolve()
    for path in (Path(p).resolve() for p in paths or []):
        if folder in path.parents:
            path.unlink(missing_ok=True)
            with suppress(OSError):  # Gradio's folder per upload (named by its hash): gone once empty
                path.parent.rmdir()


@dataclass
class ConfirmPanel:
    """A hidden panel asking to confirm what ``pending`` holds (an action, a document); Cancel hides it."""

    pending: gr.State
    panel: gr.Group
    text: gr.Markdown
    confirm: gr.Button


def build_confirm_panel(panel_id: str, buttons: str) -> ConfirmPanel:
    """The panel ``#panel_id`` with the buttons ``#{buttons}-confirm`` and ``#{buttons}-cancel``."""
    pending = gr.State("")
    with gr.Group(visible=False, elem_id=panel_id) as panel:
        text = gr.Markdown()
        with gr.Row():
            confirm = gr.Button("Confirm", variant="stop", size="sm", elem_id=f"{buttons}-confirm")
            cancel = gr.Button("Cancel", size="sm", elem_id=f"{buttons}-cancel")
    cancel.click(lambda: ["", gr.Group(visible=False)], None, [pending, panel], api_name=False)
    return ConfirmPanel(pending, panel, text, confirm)


def build_admin(admin: Admin, require: Require, refresh_seconds: float) -> gr.Tab:
    with gr.Tab("Admin", id="admin", visible=False, elem_id="tab-admin") as tab:
        admin_message = gr.Markdown(elem_id="admin-message")
        with gr.Tab("Adapter versions") as versions_tab:
            versions_note = gr.Markdown(elem_id="versions-note")
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
            action_panel = build_confirm_panel("confirm-panel", "action")
            report = gr.Markdown(elem_id="version-report")
            report_figure = gr.Image(label="Evaluation tracks", type="filepath", interactive=False, visible=False)
        with gr.Tab("Training runs", elem_id="tab-runs") as runs_tab:
            runs_note = gr.Markdown(elem_id="runs-note")
            runs = gr.Dataframe(interactive=False, elem_id="runs", wrap=True)
            with gr.Row():
                train = gr.Button("Start a training run", elem_id="train-start")
                refresh_runs = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
            # Follows a run (step x/N, percent, ETA) while this tab is open; its ticks are not user activity.
            runs_timer = gr.Timer(refresh_seconds, active=False)
        with gr.Tab("Feedback") as feedback_tab:
            # y_axis_format "d": counts are whole numbers ("3", not "3.000000").
            volume = gr.LinePlot(x="day", y="count", color="kind", title="Feedback per day (30 days)",
                                 y_axis_format="d", elem_id="volume")
            per_annotator = gr.BarPlot(x="annotator", y="judgments", title="Judgments per annotator",
                                       y_axis_format="d", elem_id="per-annotator")
            agreement = gr.Markdown(elem_id="agreement")
            annotators = gr.Dataframe(interactive=False, elem_id="annotators")
        with gr.Tab("Export") as export_tab:
            with gr.Row():
                export_kind = gr.Radio(["sft", "dpo", "kto"], value="dpo", label="Dataset")
                export_format = gr.Radio(["jsonl", "parquet", "hf"], value="jsonl", label="Format")
            export_button = gr.Button("Export", elem_id="export")
            export_file = gr.File(label="Download (zip with the manifest)", elem_id="export-file")
        with gr.Tab("Accounts", elem_id="tab-accounts") as accounts_tab:
            account_message = gr.Markdown(elem_id="account-message")
            accounts = gr.Dataframe(interactive=False, elem_id="accounts")
            with gr.Row():
                new_username = gr.Textbox(label="New account's username", elem_id="account-new-username", scale=3)
                new_role = gr.Dropdown(list(ROLES), value="student", label="Role", elem_id="account-new-role",
                                       scale=2)
                add_account = gr.Button("Add account", variant="primary", elem_id="account-add", scale=1)
            with gr.Row():
                account = gr.Dropdown([], label="Account", elem_id="account-select", scale=3)
                account_role = gr.Dropdown(list(ROLES), value=None, label="New role", elem_id="account-role",
                                           scale=2)
            with gr.Row():
                set_role = gr.Button("Change role", size="sm", elem_id="account-set-role")
                disable = gr.Button("Disable", size="sm", variant="stop", elem_id="account-disable")
                enable = gr.Button("Enable", size="sm", elem_id="account-enable")
                reset = gr.Button("Reset password", size="sm", elem_id="account-reset")
        with gr.Tab("Library", elem_id="tab-library") as library_tab:
            library_note = gr.Markdown(elem_id="library-note")
            library_message = gr.Markdown(elem_id="library-message")
            library = gr.Dataframe(interactive=False, elem_id="library", wrap=True)
            # Files go to Gradio's upload route, open to signed-in admins only (bot.hardening); every
            # file type is let through so that a wrong one gets careloop's reason, not the browser's.
            add_documents = gr.UploadButton("Add documents (.md, .txt, .pdf)", file_count="multiple",
                                            type="filepath", variant="primary", elem_id="library-add")
            with gr.Row():
                document = gr.Dropdown([], label="Document", elem_id="library-select", scale=3)
                remove = gr.Button("Remove", variant="stop", size="sm", elem_id="library-remove", scale=1)
            removal = build_confirm_panel("library-confirm-panel", "library")

    def overview(request: gr.Request) -> list[Any]:
        require(request, "admin")
        frame, summary = admin.annotators()
        listed, volume_frame = admin.versions(), admin.volume()
        run_frame = admin.runs()
        # The message line is cleared: it told the outcome of an action, which is history by now.
        return ["", listed, admin.versions_note(listed), gr.Dropdown(choices=admin.version_names()), run_frame,
                admin.runs_note(run_frame), gr.LinePlot(value=volume_frame, y_lim=count_axis(volume_frame["count"])),
                gr.BarPlot(value=frame, y_lim=count_axis(frame["judgments"])), frame, summary, admin.account_table(),
                gr.Dropdown(choices=admin.usernames()), ""]

    tab.select(overview, None, [admin_message, versions, versions_note, version, runs, runs_note, volume,
                                per_annotator, annotators, agreement, accounts, account, account_message],
               api_name="admin_overview")

    def refreshed_runs(request: gr.Request):
        require(request, "admin")
        frame = admin.runs()
        return frame, admin.runs_note(frame)

    refresh_runs.click(refreshed_runs, None, [runs, runs_note], api_name="admin_runs")

    def followed_runs(request: gr.Request):
        if not request.username:  # the session ended: the page says so on the next user action
            return gr.skip(), gr.skip()
        require(request, "admin", activity=False)
        frame = admin.runs()
        return frame, admin.runs_note(frame)

    runs_timer.tick(followed_runs, None, [runs, runs_note], api_name=False, show_progress="hidden")
    runs_tab.select(lambda: gr.Timer(active=True), None, [runs_timer], api_name=False)
    for other in (versions_tab, feedback_tab, export_tab, accounts_tab, library_tab):
        other.select(lambda: gr.Timer(active=False), None, [runs_timer], api_name=False)

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
        button.click(ask_to_confirm(action), [version], [action_panel.pending, action_panel.panel, action_panel.text],
                     api_name=False)

    def confirmed(action: str, name: str | None, why: str, request: gr.Request) -> list[Any]:
        viewer = require(request, "admin")
        try:
            done = admin.act(viewer, action, name, why)
        except UserError as exc:
            gr.Warning(str(exc))
            return [gr.skip()] * 5
        return ["", gr.Group(visible=False), done, admin.versions(), gr.Dropdown(choices=admin.version_names())]

    action_panel.confirm.click(confirmed, [action_panel.pending, version, action_reason],
                               [action_panel.pending, action_panel.panel, admin_message, versions, version],
                               api_name="admin_act")

    def start_training(request: gr.Request) -> Any:  # the runs table
        viewer = require(request, "admin")
        try:  # a toast, not the page's message line: it would still say "queued" long after the run ended
            gr.Info(admin.start_training(viewer))
        except UserError as exc:
            gr.Warning(str(exc))
        frame = admin.runs()
        return frame, admin.runs_note(frame), gr.Timer(active=True)

    train.click(start_training, None, [runs, runs_note, runs_timer], api_name="admin_train")

    def export(kind: str, fmt: str, request: gr.Request) -> str:
        viewer = require(request, "admin")
        try:
            return handout(admin.export(viewer, kind, fmt))
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip()

    export_button.click(export, [export_kind, export_format], [export_file], api_name="admin_export")

    def account_action(act: Callable[[Viewer, str | None, str | None], str]):
        """A handler doing ``act(viewer, username, role)``; the outcome (with a generated password, shown
        once) goes to the accounts' message line, and the table and the account list are refreshed."""
        def handler(username: str | None, role: str | None, request: gr.Request) -> list[Any]:
            viewer = require(request, "admin")
            try:
                message = act(viewer, username, role)
            except UserError as exc:
                gr.Warning(str(exc))
                return [gr.skip()] * 3
            return [message, admin.account_table(), gr.Dropdown(choices=admin.usernames())]
        return handler

    outcome = [account_message, accounts, account]
    chosen = [account, account_role]
    add_account.click(account_action(admin.add_account), [new_username, new_role], outcome,
                      api_name="admin_account_add")
    set_role.click(account_action(admin.set_role), chosen, outcome, api_name="admin_account_role")
    disable.click(account_action(lambda viewer, name, _: admin.set_disabled(viewer, name, True)), chosen, outcome,
                  api_name="admin_account_disable")
    enable.click(account_action(lambda viewer, name, _: admin.set_disabled(viewer, name, False)), chosen, outcome,
                 api_name="admin_account_enable")
    reset.click(account_action(lambda viewer, name, _: admin.reset_password(viewer, name)), chosen, outcome,
                api_name="admin_account_reset")

    def library_view() -> list[Any]:
        """The library's note, table and the documents to choose from."""
        table = admin.library_table()
        return [admin.library_note(table), table, gr.Dropdown(choices=admin.document_choices(), value=None)]

    def show_library(request: gr.Request) -> list[Any]:
        require(request, "admin")
        return ["", *library_view()]

    library_outputs = [library_message, library_note, library, document]
    library_tab.select(show_library, None, library_outputs, api_name="admin_library")

    def add_to_library(paths: list[str] | None, request: gr.Request) -> list[Any]:
        try:
            viewer = require(request, "admin")
            message = admin.add_documents(viewer, paths)
        except UserError as exc:  # the reasons stay on the page, one line per refused file
            message = str(exc)
        finally:
            discard_uploads(paths)
        return [message, *library_view(), None]

    add_documents.upload(add_to_library, [add_documents], [*library_outputs, add_documents],
                         api_name="admin_library_add")

    def ask_to_remove(document_id: str | None, request: gr.Request) -> list[Any]:
        require(request, "admin")
        try:
            text = admin.removal_confirmation(document_id)
        except UserError as exc:
            gr.Warning(str(exc))
            return [gr.skip()] * 3
        return [document_id, gr.Group(visible=True), f"**Confirm:** {text}"]

    remove.click(ask_to_remove, [document], [removal.pending, removal.panel, removal.text], api_name=False)

    def remove_from_library(document_id: str | None, request: gr.Request) -> list[Any]:
        viewer = require(request, "admin")
        try:
            message = admin.remove_document(viewer, document_id)
        except UserError as exc:
            gr.Warning(str(exc))
            return [gr.skip()] * 6
        return ["", gr.Group(visible=False), message, *library_view()]

    removal.confirm.click(remove_from_library, [removal.pending], [removal.pending, removal.panel, *library_outputs],
                          api_name="admin_library_remove")
    return tab
