"""What the admin page's tabs share: the services every tab acts through, the shape of a built tab,
the panel that asks to confirm a lasting action, and the handing out of files for download.

Kept apart from ``bot.admin`` (which imports every tab) so that a tab imports it without a cycle.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from sqlalchemy.orm import Session, sessionmaker

from adapters.registry import Registry
from bot.errors import UserError
from bot.hardening import HANDOUTS, session_tokens
from bot.pages import Require
from careloop.settings import Settings
from serving.client import ServingClient


@dataclass(eq=False)  # one object per app, compared and hashed by identity
class AdminServices:
    """What the tabs act through: the same registry, database and serving as the CLI, so every action
    is audited the same way. One instance serves every tab, so a changed setting reaches them all."""

    settings: Settings
    sessions: sessionmaker[Session]
    registry: Registry
    client: ServingClient


@dataclass
class Follow:
    """What the admin page refreshes by itself while the tab is open (issue 29, 7): ``outputs``, read-only
    components only (tables, charts, status lines; never a form the admin may be filling in), set to
    ``values(*inputs)`` (``gr.skip()`` for one that has not changed); the inputs come as the page sends
    them, unprocessed (a table as ``shown_rows`` reads it). A tick must stay cheap: database reads, never
    a rebuilt index."""

    outputs: list[Any]
    values: Callable[..., list[Any]]
    inputs: list[Any] = field(default_factory=list)


@dataclass
class AdminTab:
    """A tab as built: the tab, the components the admin page refreshes when it is opened (``shown``)
    and ``view()``, their values now, in that order (none for a tab that loads when it is selected),
    and what is refreshed every few seconds while it stays open (``follow``, None for nothing)."""

    tab: gr.Tab
    shown: list[Any] = field(default_factory=list)
    view: Callable[[], list[Any]] = list
    follow: Follow | None = None


def shown_rows(table: Any, columns: list[str]) -> list[tuple[str, ...]]:
    """The ``columns`` of each row of a Dataframe as the page sends it (a raw, unprocessed input:
    ``{"headers": [...], "data": [[...], ...]}``; anything else, a blank input included, is no rows),
    as text; a table's blank row left out."""
    headers = table.get("headers") or [] if isinstance(table, dict) else []
    if not set(columns) <= set(headers):
        return []
    at = [headers.index(column) for column in columns]
    rows = [tuple(cell_text(row[i]) if i < len(row) else "" for i in at) for row in table.get("data") or []]
    return [row for row in rows if any(row)]


def cell_text(value: Any) -> str:
    """A table cell as the page sent it back, as text ("" for a blank)."""
    if isinstance(value, float) and value.is_integer():  # an id the page sent back as 3.0
        value = int(value)
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def choices_if_changed(table: Any, column: str, now: list[str]) -> Any:
    """A dropdown's new ``now`` choices if they differ from the ``column`` of the table shown beside it
    (``shown_rows``; listed from the same rows), else ``gr.skip()``: a timer's tick leaves a dropdown the
    admin may be using alone unless something was added or removed, and never changes what is chosen."""
    listed = {row[0] for row in shown_rows(table, [column])}
    return gr.skip() if listed == {str(name) for name in now} else gr.Dropdown(choices=now)


def refused(error: UserError, outputs: int) -> list[Any]:
    """What a handler returns for an action refused with ``error``: the reason in a toast, and its
    ``outputs`` left as they were."""
    gr.Warning(str(error))
    return [gr.skip()] * outputs


@dataclass
class ConfirmPanel:
    """A hidden panel asking to confirm what ``pending`` holds (an action, a document); Cancel hides it."""

    pending: gr.State
    panel: gr.Group
    text: gr.Markdown
    confirm: gr.Button

    @staticmethod
    def hidden() -> list[Any]:
        """The values of ``pending`` and ``panel`` once the action is done or cancelled."""
        return ["", gr.Group(visible=False)]

    def ask_on(self, button: gr.Button, chosen: gr.Dropdown, require: Require,
               confirmation: Callable[[str | None], str], pending: str | None = None) -> None:
        """A click on ``button`` shows the panel with ``confirmation(chosen value)`` (a refusal is shown
        as a warning instead); Confirm then acts on ``pending``, or on the chosen value if None."""
        def handler(value: str | None, request: gr.Request) -> list[Any]:
            require(request, "admin")
            try:
                text = confirmation(value)
            except UserError as exc:
                return refused(exc, 3)
            return [value if pending is None else pending, gr.Group(visible=True), f"**Confirm:** {text}"]

        button.click(handler, [chosen], [self.pending, self.panel, self.text], api_name=False)


def build_confirm_panel(panel_id: str, buttons: str) -> ConfirmPanel:
    """The panel ``#panel_id`` with the buttons ``#{buttons}-confirm`` and ``#{buttons}-cancel``."""
    pending = gr.State("")
    with gr.Group(visible=False, elem_id=panel_id) as panel:
        text = gr.Markdown()
        with gr.Row():
            confirm = gr.Button("Confirm", variant="stop", size="sm", elem_id=f"{buttons}-confirm")
            cancel = gr.Button("Cancel", size="sm", elem_id=f"{buttons}-cancel")
    # A lambda: handlers that touch no page's data are lambdas (tests/bot/test_roles.py sorts them by name).
    cancel.click(lambda: ConfirmPanel.hidden(), None, [pending, panel], api_name=False)
    return ConfirmPanel(pending, panel, text, confirm)


def handout(path: str | None, request: gr.Request) -> str | None:
    """A copy of ``path`` for Gradio to serve to the session of ``request`` only. Gradio serves every
    file under ``allowed_paths`` to anyone signed in, students included, so careloop's home (exports,
    run snapshots holding clinicians' corrections) is never one: a handler hands out a copy (mode
    0600) put straight into Gradio's cache (the bot's private ``gradio-cache``, see ``bot.app``) under
    a name no one can guess, which Gradio's file route serves to this session alone
    (``bot.hardening.Handouts``). Gradio serves it from there without a second copy and deletes it
    after CARELOOP_BOT_DOWNLOAD_SECONDS."""
    if path is None:
        return None
    folder = Path(get_upload_folder()) / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    HANDOUTS.grant(folder, session_tokens(dict(request.cookies)))
    return shutil.copy(path, folder)
