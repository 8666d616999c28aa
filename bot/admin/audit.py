"""The Audit tab: who did what, and when (issue 29, 7: the audit log was written but nowhere to be read
on the page). The latest entries, newest first, filtered by action; the same rows `careloop` commands
and every admin action write (``careloop.audit``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd
from sqlalchemy import select

from bot.admin.shared import AdminServices, AdminTab, Follow
from bot.pages import Require
from careloop.audit import AuditEvent

COLUMNS = ["when (UTC)", "who", "action", "target", "details"]
ALL = "every action"


@dataclass
class Audit:
    services: AdminServices
    limit: int = 200

    def actions(self) -> list[str]:
        with self.services.sessions() as session:
            return [ALL, *session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action))]

    def table(self, action: str | None = None) -> pd.DataFrame:
        """The latest ``limit`` entries of ``action`` (all of them for None or ALL), newest first."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(self.limit)
        if action and action != ALL:
            query = query.where(AuditEvent.action == action)
        with self.services.sessions() as session:
            rows = [{"when (UTC)": f"{event.at:%Y-%m-%d %H:%M:%S}", "who": event.actor, "action": event.action,
                     "target": event.target, "details": _details(event.details)}
                    for event in session.scalars(query)]
        return pd.DataFrame(rows, columns=COLUMNS)


def _details(details: dict[str, Any] | None) -> str:
    return "; ".join(f"{key}: {value}" for key, value in (details or {}).items())[:300]


def build_audit_tab(audit: Audit, require: Require) -> AdminTab:
    """The tab; it loads when selected, again when the action filter changes, and every few seconds
    while it stays open."""
    with gr.Tab("Audit", elem_id="tab-audit") as tab:
        action = gr.Dropdown([ALL], value=ALL, label="Action", elem_id="audit-action")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="audit")

    def show_audit(chosen: str | None, request: gr.Request) -> list[Any]:
        require(request, "admin")
        return [gr.Dropdown(choices=audit.actions(), value=chosen or ALL), audit.table(chosen)]

    tab.select(show_audit, [action], [action, table], api_name="admin_audit")
    action.input(show_audit, [action], [action, table], api_name=False)
    # While open, the table takes in new entries (the filter's list of actions stays as it was: a form).
    return AdminTab(tab, follow=Follow([table], lambda chosen: [audit.table(chosen)], [action]))
