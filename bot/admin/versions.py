"""The Adapter versions tab: every version with its status and evaluation report, and promote / reject /
retire / roll back, each confirmed first. The actions go through the same registry and rollout as
`careloop adapters`, so they are audited the same way, with the admin's username as the actor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from adapters import rollout
from adapters.registry import RegistryError, Status
from bot.access import Viewer
from bot.admin.shared import (
    AdminServices,
    AdminTab,
    Follow,
    build_confirm_panel,
    choices_if_changed,
    handout,
    refused,
)
from bot.errors import UserError
from bot.pages import Require
from serving.client import ControlUnsupported, ServingRejected, ServingUnavailable
from trainer.runs import run_dir

ACTIONS = ("promote", "reject", "retire", "rollback")


@dataclass
class Versions:
    services: AdminServices

    def table(self) -> pd.DataFrame:
        try:
            loaded = self.services.client.loaded_everywhere()
        except ServingUnavailable:
            loaded = set()
        rows = [{"version": v.name, "status": v.status, "loaded": "yes" if v.name in loaded else "",
                 "parent": v.parent or "", "run": v.training_run_id or "",
                 "created": f"{v.created_at:%Y-%m-%d %H:%M}", "note": v.note}
                for v in reversed(self.services.registry.versions())]
        return pd.DataFrame(rows, columns=["version", "status", "loaded", "parent", "run", "created", "note"])

    @staticmethod
    def note(table: pd.DataFrame) -> str:
        return ("No versions yet: the base model answers. A training run that passes the gate adds one "
                "(Training runs tab), or register one with `careloop adapters register`." if table.empty else "")

    def names(self) -> list[str]:
        return [v.name for v in reversed(self.services.registry.versions())]

    def report(self, name: str | None) -> tuple[str, str | None]:
        """(Markdown, path of the report's figure or None) for version ``name``."""
        if not name:
            return "Choose a version to see its evaluation report.", None
        try:
            version = self.services.registry.get(name)
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        directory = run_dir(self.services.settings, version.training_run_id) if version.training_run_id else None
        if directory and (directory / "report.md").is_file():
            figure = directory / "report.png"
            # The figure shows below the text (a handed-out copy): its relative link would be a broken image.
            text = (directory / "report.md").read_text().replace("![scores](report.png)", "")
            return text, str(figure) if figure.is_file() else None
        card = Path(version.path) / "README.md"
        if card.is_file():
            return card.read_text(), None
        return f"No evaluation report for `{name}` (registered by hand, without a training run).", None

    def confirmation(self, action: str, name: str | None) -> str:
        """What ``action`` would do, for the admin to confirm; raises UserError if it cannot be done."""
        live = self.services.registry.live()
        if action == "rollback":
            if live is None:
                raise UserError("Nothing to roll back: no version is live (the base model answers).")
            back = f"`{live.replaced}` becomes live again" if live.replaced else "the base model answers again"
            return f"Roll back: {back} and `{live.name}` is rejected."
        if action not in ACTIONS:
            raise UserError(f"Unknown action {action!r}.")
        if not name:
            raise UserError(f"Choose the version to {action}.")
        try:
            status = self.services.registry.get(name).status
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        if action == "promote":
            if status not in (Status.CANDIDATE, Status.RETIRED):
                raise UserError(f"`{name}` is {status}; only candidate or retired versions can be promoted.")
            replaced = live.name if live else "the base model"
            return f"Promote `{name}`: it is loaded, smoke-tested, then replaces `{replaced}`."
        if action == "reject" and status == Status.LIVE:
            raise UserError(f"`{name}` is live: roll it back (or promote another) instead of rejecting it.")
        if action == "retire" and status == Status.LIVE:
            return f"Retire `{name}`: the base model answers until another version is promoted."
        return f"{action.capitalize()} `{name}` (now {status})."

    def act(self, viewer: Viewer, action: str, name: str | None, reason: str = "") -> str:
        self.confirmation(action, name)  # re-checked: the state may have changed since the dialog
        registry, client, actor = self.services.registry, self.services.client, f"bot:{viewer.username}"
        try:
            if action == "promote":
                done = rollout.promote(registry, name, client, actor=actor)
                message = f"`{done.live}` is live (replaced {done.previous or 'the base model'})."
            elif action == "rollback":
                done = rollout.rollback(registry, client, actor=actor,
                                        reason=reason or f"rolled back by {viewer.username}")
                message = f"Rolled back: `{done.live}` answers again; `{done.previous}` is rejected."
            elif action == "reject":
                registry.reject(name, actor=actor, reason=reason or f"rejected by {viewer.username}")
                message = f"`{name}` is rejected."
            else:
                registry.retire(name, actor=actor)
                message = f"`{name}` is retired."
        except (RegistryError, ServingRejected, ServingUnavailable, ControlUnsupported) as exc:
            raise UserError(f"{action} failed: {exc}") from None
        rollout.unload_replaced(registry, client, self.services.settings.promotion_grace_seconds, background=True)
        return message


def build_versions_tab(versions: Versions, require: Require, message: gr.Markdown) -> AdminTab:
    """The tab; an action's outcome goes to the admin page's ``message`` line."""
    with gr.Tab("Adapter versions") as tab:
        note = gr.Markdown(elem_id="versions-note")
        table = gr.Dataframe(interactive=False, elem_id="versions", wrap=True)
        with gr.Row():
            version = gr.Dropdown([], label="Version", elem_id="version-select", scale=2)
            reason = gr.Textbox(label="Reason (reject / roll back)", scale=3)
        with gr.Row():
            buttons = {action: gr.Button(label, size="sm", elem_id=f"action-{action}",
                                         variant="stop" if action in ("reject", "rollback") else "secondary")
                       for action, label in (("promote", "Promote"), ("reject", "Reject"), ("retire", "Retire"),
                                             ("rollback", "Roll back live"))}
        panel = build_confirm_panel("confirm-panel", "action")
        report = gr.Markdown(elem_id="version-report")
        report_figure = gr.Image(label="Evaluation tracks", type="filepath", interactive=False, visible=False)

    def view() -> list[Any]:
        listed = versions.table()
        return [listed, versions.note(listed), gr.Dropdown(choices=versions.names())]

    def followed(shown: Any) -> list[Any]:
        """The table and its note now; the version list too, once a version was added (a run finished)."""
        listed = versions.table()
        return [listed, versions.note(listed), choices_if_changed(shown, "version", list(listed["version"]))]

    def show_report(name: str | None, request: gr.Request) -> list[Any]:
        require(request, "admin")
        try:
            text, figure = versions.report(name)
        except UserError as exc:
            return refused(exc, 2)
        return [text, gr.Image(value=handout(figure, request), visible=figure is not None)]

    version.change(show_report, [version], [report, report_figure], api_name="admin_report")

    for action, button in buttons.items():
        panel.ask_on(button, version, require, lambda name, action=action: versions.confirmation(action, name),
                     pending=action)

    def confirmed(action: str, name: str | None, why: str, request: gr.Request) -> list[Any]:
        viewer = require(request, "admin")
        try:
            done = versions.act(viewer, action, name, why)
        except UserError as exc:
            return refused(exc, 5)
        return [*panel.hidden(), done, versions.table(), gr.Dropdown(choices=versions.names())]

    panel.confirm.click(confirmed, [panel.pending, version, reason],
                        [panel.pending, panel.panel, message, table, version], api_name="admin_act")
    return AdminTab(tab, [table, note, version], view, Follow([table, note, version], followed, [table]))
