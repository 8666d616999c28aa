"""The bot's pages as Gradio components, one builder per tab (``build_chat``, ``build_review``,
``build_admin``); ``bot.app`` assembles them. Each builder makes its tab and wires its handlers to
the page's Gradio-free logic (``bot.chat``, ``bot.review``, ``bot.admin``); every handler checks the
viewer's role on the server with ``require``, so a call to a hidden tab's endpoint is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from bot.access import Access, Refused, Viewer

Require = Callable[[gr.Request, str], Viewer]


def guard(access: Access) -> Require:
    """``require(request, page)``: the signed-in viewer if their role may open ``page``; else the
    page shows why (a ``gr.Error``)."""

    def require(request: gr.Request, page: str) -> Viewer:
        try:
            return access.require(request.username, page)
        except Refused as exc:
            raise gr.Error(str(exc), print_exception=False) from None  # logged as access_refused, no traceback

    return require
