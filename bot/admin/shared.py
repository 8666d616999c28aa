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
class AdminTab:
    """A tab as built: the tab, the components the admin page refreshes when it is opened (``shown``)
    and ``view()``, their values now, in that order (none for a tab that loads when it is selected)."""

    tab: gr.Tab
    shown: list[Any] = field(default_factory=list)
    view: Callable[[], list[Any]] = list


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
