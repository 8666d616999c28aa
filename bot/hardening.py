"""HTTP hardening of the bot's server, as ASGI middleware set through Gradio's ``app_kwargs``
(Gradio has no option of its own for any): security headers on every response, no uploads, and no
"call" API.

The Content-Security-Policy is what keeps hostile text harmless whatever renders it: a markdown
image or iframe pointing at another host (typed by a student, or repeated by a model) would make a
clinician's browser send the page's content to that host in a URL; with ``img-src 'self'`` and
``frame-src 'none'`` the browser refuses. Inline script stays allowed because Gradio's page and
careloop's own ``head`` scripts need it; Gradio's HTML sanitiser removes script from messages.

No page of the bot takes a file, but Gradio's upload route stores any file, of any size, from
anyone signed in, and serves it back: a student could fill the server's disk (and with it the
outbox that keeps clinicians' judgments) or host files there. The route is refused.

Gradio's "call" routes (``/gradio_api/call/...``, for curl) are used by neither the page nor
gradio_client (both join the queue) and answer a signed-in caller's unknown endpoint with a 500 and
a traceback in the log; they are refused too.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
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


class RefusedRoutes:
    UPLOADS = PlainTextResponse("careloop takes no file uploads.", status_code=403)
    CALLS = PlainTextResponse("No such route: careloop's pages are used through the web page.", status_code=404)

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/") if scope["type"] == "http" else ""
        if path.endswith("/upload"):
            return await self.UPLOADS(scope, receive, send)
        if path.startswith(("/gradio_api/call/", "/call/")):
            return await self.CALLS(scope, receive, send)
        await self.app(scope, receive, send)


def security_middleware() -> list[Middleware]:
    """``app_kwargs={"middleware": ...}`` for ``Blocks.launch`` (the first wraps the others, so a
    refused upload carries the headers too)."""
    return [Middleware(SecurityHeaders), Middleware(RefusedRoutes)]
