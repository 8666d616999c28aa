"""The Accounts tab: accounts added (with a temporary password shown once), their role changed,
disabled or enabled, their password reset. Each goes through ``careloop.accounts`` as `careloop users`
does, audited with the admin as the actor; an admin cannot lock themselves out here, nor leave no
enabled admin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

import careloop.accounts
from bot.access import Viewer
from bot.admin.shared import AdminServices, AdminTab, Follow, choices_if_changed, refused
from bot.errors import UserError
from bot.pages import Require
from careloop.accounts import ROLES


@dataclass
class Accounts:
    services: AdminServices

    def table(self) -> pd.DataFrame:
        rows = [{"username": u.username, "role": u.role,
                 "state": "disabled" if u.disabled else "temporary password" if u.must_change_password else "active",
                 "created": f"{u.created_at:%Y-%m-%d %H:%M}"} for u in careloop.accounts.users(self.services.sessions)]
        return pd.DataFrame(rows, columns=["username", "role", "state", "created"])

    def usernames(self) -> list[str]:
        return [u.username for u in careloop.accounts.users(self.services.sessions)]

    def add(self, viewer: Viewer, username: str | None, role: str | None) -> str:
        """Create an account with a generated temporary password; the message shows it, once."""
        password = careloop.accounts.new_password()
        with _account_errors():
            user = careloop.accounts.add_user(self.services.sessions, username or "", role or "", password,
                                              actor=f"bot:{viewer.username}", temporary=True)
        return (f"**{user.username}** added as {user.role}. Temporary password, shown once: `{password}`. "
                "Hand it over in person; they choose their own at the first sign-in.")

    def set_role(self, viewer: Viewer, username: str | None, role: str | None) -> str:
        name = _other_account(viewer, username, "change your own role")
        if not role:  # no default: a click on "Change role" must not demote anyone to a preset role
            raise UserError("Choose the new role first.")
        with _account_errors():
            careloop.accounts.set_role(self.services.sessions, name, role or "", actor=f"bot:{viewer.username}",
                                       keep_an_admin=True)
        return f"**{name}** is now {role}; it applies to their next click."

    def set_disabled(self, viewer: Viewer, username: str | None, disabled: bool) -> str:
        name = _other_account(viewer, username, "disable your own account")
        with _account_errors():
            careloop.accounts.set_disabled(self.services.sessions, name, disabled, actor=f"bot:{viewer.username}",
                                           keep_an_admin=True)
        return (f"**{name}** is disabled: signed-in pages are refused from their next click." if disabled
                else f"**{name}** is enabled again.")

    def reset_password(self, viewer: Viewer, username: str | None) -> str:
        name = _other_account(viewer, username, "reset your own password")
        password = careloop.accounts.new_password()
        with _account_errors():
            careloop.accounts.set_password(self.services.sessions, name, password, actor=f"bot:{viewer.username}",
                                           temporary=True)
        return (f"New temporary password for **{name}**, shown once: `{password}`. Their old one no longer "
                "works; they choose their own at the next sign-in.")


def _other_account(viewer: Viewer, username: str | None, what: str) -> str:
    name = careloop.accounts.normalize_username(username or "")
    if not name:
        raise UserError("Choose an account first.")
    if name == viewer.username:  # an admin locking themselves out of the page they are using
        raise UserError(f"You cannot {what} here: ask another admin, or use `careloop users` on the server.")
    return name


@contextmanager
def _account_errors() -> Iterator[None]:
    try:
        yield
    except careloop.accounts.AccountError as exc:
        raise UserError(f"Not done: {exc}.") from None


def build_accounts_tab(accounts: Accounts, require: Require) -> AdminTab:
    with gr.Tab("Accounts", elem_id="tab-accounts") as tab:
        message = gr.Markdown(elem_id="account-message")
        table = gr.Dataframe(interactive=False, elem_id="accounts")
        with gr.Row():
            new_username = gr.Textbox(label="New account's username", elem_id="account-new-username", scale=3)
            new_role = gr.Dropdown(list(ROLES), value="student", label="Role", elem_id="account-new-role", scale=2)
            add = gr.Button("Add account", variant="primary", elem_id="account-add", scale=1)
        with gr.Row():
            account = gr.Dropdown([], label="Account", elem_id="account-select", scale=3)
            role = gr.Dropdown(list(ROLES), value=None, label="New role", elem_id="account-role", scale=2)
        with gr.Row():
            set_role = gr.Button("Change role", size="sm", elem_id="account-set-role")
            disable = gr.Button("Disable", size="sm", variant="stop", elem_id="account-disable")
            enable = gr.Button("Enable", size="sm", elem_id="account-enable")
            reset = gr.Button("Reset password", size="sm", elem_id="account-reset")

    def listed() -> list[Any]:
        return [accounts.table(), gr.Dropdown(choices=accounts.usernames())]

    def view() -> list[Any]:
        return [*listed(), ""]  # the message line cleared: it told an earlier outcome, history by now

    def account_action(act: Callable[[Viewer, str | None, str | None], str]):
        """A handler doing ``act(viewer, username, role)``; the outcome (with a generated password, shown
        once) goes to the accounts' message line, and the table and the account list are refreshed."""
        def handler(username: str | None, role: str | None, request: gr.Request) -> list[Any]:
            viewer = require(request, "admin")
            try:
                outcome = act(viewer, username, role)
            except UserError as exc:
                return refused(exc, 3)
            return [outcome, *listed()]
        return handler

    outputs = [message, table, account]
    chosen = [account, role]
    add.click(account_action(accounts.add), [new_username, new_role], outputs, api_name="admin_account_add")
    set_role.click(account_action(accounts.set_role), chosen, outputs, api_name="admin_account_role")
    disable.click(account_action(lambda viewer, name, _: accounts.set_disabled(viewer, name, True)), chosen, outputs,
                  api_name="admin_account_disable")
    enable.click(account_action(lambda viewer, name, _: accounts.set_disabled(viewer, name, False)), chosen, outputs,
                 api_name="admin_account_enable")
    reset.click(account_action(lambda viewer, name, _: accounts.reset_password(viewer, name)), chosen, outputs,
                api_name="admin_account_reset")
    def followed(shown: Any) -> list[Any]:
        """The table now, and the account list once an account was added (`careloop users add`)."""
        listed = accounts.table()
        return [listed, choices_if_changed(shown, "username", list(listed["username"]))]

    return AdminTab(tab, [table, account, message], view, Follow([table, account], followed, [table]))
