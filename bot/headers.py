"""Security headers on every response of the bot, set as ASGI middleware through Gradio's
``app_kwargs`` (Gradio has no option of its own for them).

The Content-Security-Policy is what keeps hostile text harmless whatever renders it: a markdown
image or iframe pointing at another host (typed by a student, or repeated by a model) would make a
clinician's browser send the page's content to that host in a URL; with ``img-src 'self'`` and
``frame-src 'none'`` the browser refuses. Inline script stays allowed because Gradio's page and
careloop's own ``head`` scripts need it; Gradio's HTML sanitiser removes script from messages.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "frame-src 'none'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
HEADERS = [(b"content-security-policy", POLICY.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


def security_middleware() -> list[Middleware]:
    """``app_kwargs={"middleware": ...}`` for ``Blocks.launch``."""
    return [Middleware(SecurityHeaders)]
