"""The bot's pages as Gradio components, one builder per tab (``build_chat``, ``build_review``; the
admin page's ``build_admin`` lives in ``bot.admin``, each of its tabs beside its logic); ``bot.app``
assembles them. Each builder makes its tab and wires its handlers to the page's Gradio-free logic
(``bot.chat``, ``bot.review``, ``bot.admin``'s tab modules); every handler checks the viewer's role on
the server with ``require``, so a call to a hidden tab's endpoint is refused.

``require`` is also what counts as a user action for the session's idle limit (the page's status
timer does not call it), and ``own`` refuses a page state that belongs to another account: Gradio
keys state by the ``session_hash`` the client sends, so a second account sending the first's hash
would otherwise get the first's conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import gradio as gr

from bot.access import Access, Refused, SessionTokens, Viewer
from bot.hardening import session_tokens
from careloop.log import get_logger

log = get_logger(__name__)


class Require(Protocol):
    def __call__(self, request: gr.Request, page: str, *, activity: bool = True) -> Viewer: ...


class Owned(Protocol):
    owner: str


S = TypeVar("S", bound=Owned)

STATE_OF_ANOTHER = ("This page belongs to another account's session. Reload the page (and sign in again if "
                    "asked) to continue as yourself.")


def guard(access: Access, tokens: SessionTokens | None = None) -> Require:
    """``require(request, page)``: the signed-in viewer if their role may open ``page``; else the
    page shows why (a ``gr.Error``). Counts the call as activity of the request's session, unless
    ``activity=False`` (the page's own timers: they must not keep an unattended session alive)."""

    def require(request: gr.Request, page: str, *, activity: bool = True) -> Viewer:
        try:
            viewer = access.require(request.username, page)
        except Refused as exc:
            raise gr.Error(str(exc), print_exception=False) from None  # logged as access_refused, no traceback
        if tokens is not None and activity:
            tokens.touch(session_tokens(dict(request.cookies)))
        return viewer

    return require


def own(state: S | None, viewer: Viewer, fresh: Callable[[str], S]) -> S:
    """``state`` if it belongs to ``viewer`` (a new one, ``fresh(username)``, if there is none yet);
    another account's state is refused with a message."""
    if state is None:
        return fresh(viewer.username)
    if state.owner != viewer.username:
        log.warning("state_of_another_account", user=viewer.username)
        raise gr.Error(STATE_OF_ANOTHER, print_exception=False)
    return state
