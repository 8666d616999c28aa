"""The Admin page, one module per tab (as ``cli`` has one per resource): ``versions``, ``runs``,
``feedback``, ``exports``, ``accounts``, ``library`` and ``audit`` each hold their tab's logic, apart from Gradio
and raising ``bot.errors.UserError``, beside the builder of the tab. This module puts them together:
``Admin`` gives each tab's logic the shared services, and ``build_admin`` builds the page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from bot.admin.accounts import Accounts, build_accounts_tab
from bot.admin.audit import Audit, build_audit_tab
from bot.admin.exports import Exports, build_exports_tab
from bot.admin.feedback import Feedback, build_feedback_tab
from bot.admin.library import Library, build_library_tab
from bot.admin.runs import Runs, build_runs_tab
from bot.admin.shared import AdminServices, AdminTab, Follow
from bot.admin.versions import Versions, build_versions_tab
from bot.pages import Require


@dataclass(eq=False)
class Admin(AdminServices):
    """The shared services, with each tab's logic over them (``admin.versions.act(...)``). Every tab
    holds this one object, not copies of its fields, so a setting changed here reaches them all."""

    def __post_init__(self) -> None:
        self.versions, self.runs, self.feedback = Versions(self), Runs(self), Feedback(self)
        self.exports, self.accounts, self.library = Exports(self), Accounts(self), Library(self)
        self.audit = Audit(self)


def build_admin(admin: Admin, require: Require, refresh_seconds: float, elsewhere: Sequence[gr.Tab] = ()) -> gr.Tab:
    """The Admin tab holding one tab per module, refreshed when it is opened; the tab open is followed
    (every ``refresh_seconds``) while the admin page is the one open: opening one of ``elsewhere`` (the
    other pages) stops that."""
    with gr.Tab("Admin", id="admin", visible=False, elem_id="tab-admin") as page:
        message = gr.Markdown(elem_id="admin-message")  # the outcome of the last action on a version
        versions = build_versions_tab(admin.versions, require, message)  # built in the order shown
        tabs = [versions, build_runs_tab(admin.runs, require), build_feedback_tab(admin.feedback),
                build_exports_tab(admin.exports, require), build_accounts_tab(admin.accounts, require),
                build_library_tab(admin.library, require), build_audit_tab(admin.audit, require)]
        opened = gr.State(0)  # which tab is open (the first, Adapter versions, when the page opens)
        # A tab left open stays true (issue 29, 7: "No versions yet" after a run had finished, the runs and
        # charts still until the admin clicked away and back): a timer per followed tab, ticking only while
        # it is open; its ticks are not user activity (an unattended page keeps no session alive).
        timers = {index: gr.Timer(refresh_seconds, active=False) for index, tab in enumerate(tabs) if tab.follow}

    def overview(request: gr.Request) -> list[Any]:
        require(request, "admin")
        # The message line is cleared: it told the outcome of an action, which is history by now.
        return ["", *(value for tab in tabs for value in tab.view())]

    page.select(overview, None, [message, *(shown for tab in tabs for shown in tab.shown)], api_name="admin_overview")
    # Each tab shows what is true now when it is opened, not what was true when the page was.
    for tab in (tab for tab in tabs if tab.shown):
        def refreshed(request: gr.Request, tab: AdminTab = tab) -> list[Any]:
            require(request, "admin")
            return tab.view()

        tab.tab.select(refreshed, None, tab.shown, api_name=False)

    followed = list(timers.values())
    for index, tab in enumerate(tabs):  # lambdas: they touch no page's data (tests/bot/test_roles.py)
        tab.tab.select(_opening(index, list(timers)), None, [opened, *followed], api_name=False)
    page.select(lambda index: [gr.Timer(active=index == each) for each in timers], [opened], followed, api_name=False)
    for other in elsewhere:
        other.select(lambda: [gr.Timer(active=False)] * len(followed), None, followed, api_name=False)
    for index, timer in timers.items():
        follow = tabs[index].follow
        ticked = timer.tick(_follower(follow, require), follow.inputs, follow.outputs, api_name=False,
                            show_progress="hidden", preprocess=False)
        # Refused (a role changed, an account disabled): the reason once, as any handler shows it, then quiet.
        ticked.failure(lambda: gr.Timer(active=False), None, [timer], api_name=False)
    return page


def _opening(index: int, followed: list[int]) -> Callable[[], list[Any]]:
    """What opening tab ``index`` does: it is the open one, and only its timer (if any) ticks."""
    return lambda: [index, *(gr.Timer(active=each == index) for each in followed)]


def _follower(follow: Follow, require: Require) -> Callable[..., list[Any]]:
    def refreshed(request: gr.Request, *shown: Any) -> list[Any]:  # what the page shows, for ``follow``
        if not request.username:  # the session ended: the page says so at the next user action
            return [gr.skip()] * len(follow.outputs)
        require(request, "admin", activity=False)
        return follow.values(*shown)

    return refreshed
