"""The password form an account meets when it signed in with a temporary password (one an admin
generated): it replaces it before any page opens (``bot.access``: every handler refuses until then)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from careloop.accounts import MIN_PASSWORD


@dataclass
class PasswordPanel:
    panel: gr.Group
    current: gr.Textbox
    new: gr.Textbox
    repeated: gr.Textbox
    submit: gr.Button

    @property
    def fields(self) -> list[gr.Textbox]:
        return [self.current, self.new, self.repeated]


def build_password_panel() -> PasswordPanel:
    with gr.Group(visible=False, elem_id="password-panel") as panel:
        gr.Markdown("### Choose your own password\nYou signed in with a temporary password that someone set for "
                    f"you. Replace it to continue (at least {MIN_PASSWORD} characters); keep it to yourself: "
                    "what you do here is recorded under your name.")
        current = gr.Textbox(label="Temporary password", type="password", elem_id="password-current")
        new = gr.Textbox(label="New password", type="password", elem_id="password-new")
        repeated = gr.Textbox(label="New password again", type="password", elem_id="password-repeat")
        submit = gr.Button("Set my password", variant="primary", elem_id="password-submit")
    return PasswordPanel(panel, current, new, repeated, submit)
