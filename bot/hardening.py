"""HTTP hardening of the bot's server, as ASGI middleware set through Gradio's ``app_kwargs``
(Gradio has no option of its own for any): security headers on every response, no uploads, and no
"call" API.

The Content-Security-Policy is what keeps hostile text harmless whatever renders it: a markdown
image or iframe pointing at another host (typed by a student, or repeated by a model) would make a
clinician's browser send the page's content to that host in a URL; with ``img-src 'self'`` and
``frame-src 'none'`` the browser refuses. Inline script stays allowed because Gradio's page and
careloop's own ``head`` scripts need it; Gradio's HTML sanitiser removes script from messages.

Uploads: Gradio's upload route stores any file, of any size, from anyone signed in, and serves it
back: a student could fill the server's disk (and with it the outbox that keeps clinicians'
judgments) or host files there. Only the Admin page's Library tab takes files, so the route
(``/gradio_api/upload``) is open to a signed-in admin session alone (``UploadGate``, which
``bot.access.AdminUploads`` implements from the session table and the database), with a body of at
most ``CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES`` plus the multipart overhead (413 above it, before any
of it is read); everyone else (students, nurses, physicians, signed-out callers) is refused with
403 as before, and so is every other upload path.

Gradio's "call" routes (``/gradio_api/call/...``, for curl) are used by neither the page nor
gradio_client (both join the queue) and answer a signed-in caller's unknown endpoint with a 500 and
a traceback in the log; they are refused too. Beyond those two, Gradio serves some seventy routes
(audio recordings, streams, proxies, run history, "vibe" editing, ...) that careloop's page never
calls: only the routes the page and gradio_client use are let through (``ROUTES``); the rest are
refused before their body is read, so nothing is parsed or written to a temporary file.

Other sites: Gradio's CORS middleware allows any ``Origin``, with credentials, whenever the
``Host`` header is not localhost (as behind a TLS reverse proxy passing the public Host), and sets
its session cookie ``SameSite=None``: any web page a signed-in clinician opened could call the bot
as them. ``OriginGuard`` sits outside Gradio's middleware (Gradio adds its own CORS after ours, so
it is wrapped around the built stack at start-up, ``guard_origins``) and refuses every request
whose ``Origin`` is not the bot's own (the request's own ``Host``, the address it serves, and
``CARELOOP_BOT_ALLOWED_ORIGINS``) with 403 and the reason, preflights included; the session
cookies it lets out are ``SameSite=Lax``.

Size: every other request body is refused above ``CARELOOP_BOT_MAX_REQUEST_BYTES`` (413), and one
that declares no length (chunked) with 411, before any of it is read: Gradio parsed a 30 MB chat
message whole (57 MB of memory each) before the page's own limit refused it. Neither Starlette nor
uvicorn has a body limit of its own.

Sign-in: Gradio's page shows "Incorrect Credentials" for every refusal, a lock included. The
answer to a refused ``POST /login`` carries careloop's reason (``LOGIN_MESSAGE``: wrong password,
attempts left, locked and for how long; the same for a name that is no account), and the page
(``LOGIN_PAGE_SCRIPT``, added to the HTML of ``/``: Gradio's ``head`` reaches signed-in pages only)
shows it in place of Gradio's words.

Signing out is ``POST /logout`` with the page's CSRF token (``csrf_token``: an HMAC of the session
cookie under a per-process key), handed to Gradio's own logout; Gradio's ``GET /logout`` is refused,
so a link or an image in a student's text (``![x](/logout)``) cannot end a clinician's sessions.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The address of the client signing in (``POST /login``), for the login throttle (bot.access):
# Gradio's ``auth=`` callback gets only the username and password. Behind a reverse proxy on this
# machine, uvicorn takes it from X-Forwarded-For.
LOGIN_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("careloop_login_client", default="local")
# What the sign-in page says of a refused sign-in (a lock, a throttle): ``bot.access`` appends it,
# and ``RefusedRoutes`` puts it in Gradio's 400 answer, which otherwise says only "Incorrect credentials".
LOGIN_MESSAGE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("careloop_login_message", default=None)
LOGIN_MAX_BYTES = 4096  # a username and password form; more is refused before it is parsed

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
# Referrer-Policy same-origin, not no-referrer: other sites still learn nothing, and the page's own
# form posts (Sign out) carry its Origin; under no-referrer Chromium sends "Origin: null", refused above.
HEADERS = [(b"content-security-policy", POLICY.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]


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


# The routes careloop's page (Gradio's JavaScript client) and gradio_client use, by method. Paths
# are matched whole; ``{...}`` parts of Gradio's routes are ``[^/]+`` or, for files and assets, the rest.
_GET = (r"/", r"/config/?", r"/(assets|static|svelte)/.+", r"/favicon\.ico", r"/(gradio_api/)?theme\.css",
        r"/robots\.txt", r"/manifest\.json",
        r"/gradio_api/(info|login_check|app_id|user|startup-events)/?", r"/gradio_api/queue/data",
        r"/gradio_api/heartbeat/[^/]+", r"/gradio_api/file=.+")
_POST = (r"/login/?", r"/logout", r"/gradio_api/queue/join", r"/gradio_api/cancel", r"/gradio_api/reset/?")
ROUTES = {"GET": re.compile("|".join(_GET)), "HEAD": re.compile("|".join(_GET)),
          "POST": re.compile("|".join(_POST))}


_CSRF_KEY = secrets.token_bytes(32)  # per process: sessions live in its memory and end with it too
SESSION_COOKIE = "access-token"  # Gradio's session cookies: access-token[-unsecure]-<app id>


def csrf_token(session_token: str) -> str:
    """The token the page's sign-out form must carry, for the session cookie ``session_token``."""
    return hmac.new(_CSRF_KEY, session_token.encode(), hashlib.sha256).hexdigest()


class Handouts:
    """Files a handler handed to one session (an export, a version's report figure): Gradio serves any
    file of its cache to anyone signed in who has the URL, so its file route serves these to the
    sessions they were made for only (issue 31, 10: a student with an export's URL downloaded it). In
    this process's memory, as the sessions are."""

    FILE_ROUTE = "/gradio_api/file="

    def __init__(self) -> None:
        self._sessions: dict[Path, frozenset[str]] = {}  # handed-out folder -> the sessions it is for
        self._lock = threading.Lock()

    def grant(self, folder: Path, sessions: list[str]) -> None:
        with self._lock:
            for gone in [known for known in self._sessions if not known.exists()]:  # deleted by Gradio
                del self._sessions[gone]
            self._sessions[folder.resolve()] = frozenset(sessions)

    def refuses(self, path: str, cookies: dict[str, str]) -> bool:
        """Whether a request for ``path`` (a file route) from a browser with ``cookies`` asks for a file
        handed to other sessions."""
        if not path.startswith(self.FILE_ROUTE):
            return False
        try:
            wanted = Path(path[len(self.FILE_ROUTE):]).resolve()
        except (OSError, RuntimeError, ValueError):
            return False  # Gradio refuses it
        with self._lock:
            owners = next((sessions for folder, sessions in self._sessions.items() if wanted.is_relative_to(folder)),
                          None)
        return owners is not None and not owners.intersection(session_tokens(cookies))


HANDOUTS = Handouts()


def session_tokens(cookies: dict[str, str]) -> list[str]:
    """The values of Gradio's session cookies among ``cookies``."""
    return [value for name, value in cookies.items() if name.startswith(SESSION_COOKIE)]


def _cookies(headers: Headers) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # noqa: BLE001 - a malformed cookie header carries no session
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _refuse(status: int, reason: str) -> PlainTextResponse:
    # Connection: close: the body of a refused request is never read, so the connection cannot carry another.
    return PlainTextResponse(reason, status_code=status, headers={"connection": "close"})


# Shows the reason of a refused sign-in (the 400 answer's ``careloop_message``) where Gradio's login
# form says "Incorrect Credentials" (its <p class="creds">, which Svelte renders after the answer).
LOGIN_PAGE_SCRIPT = rb"""<script>
(() => {
  const careloopFetch = window.fetch;
  let said = "";
  const show = () => {
    const shown = document.querySelector("p.creds");
    if (shown && said && shown.textContent !== said) {
      shown.textContent = said;
      shown.setAttribute("role", "alert");
      shown.id = "login-message";
    }
  };
  window.fetch = async (...args) => {
    const response = await careloopFetch(...args);
    const url = new URL(String((args[0] && args[0].url) || args[0]), location.href);
    if (/\/login\/?$/.test(url.pathname) && response.status === 400) {
      try { said = (await response.clone().json()).careloop_message || ""; } catch (error) { said = ""; }
      show();
    }
    return response;
  };
  new MutationObserver(show).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>"""


async def _rewritten(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                     rewrite: Any) -> None:
    """Run ``app``, passing its whole answer through ``rewrite(status, headers, body)`` -> body or None
    (unchanged). For small answers only (a form's reply, the page's HTML)."""
    start: Message = {}
    body = b""

    async def held(message: Message) -> None:
        nonlocal start, body
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body":
            return await send(message)
        body += message.get("body", b"")
        if message.get("more_body", False):
            return None
        headers = Headers(raw=start.get("headers", []))
        changed = rewrite(start["status"], headers, body)
        if changed is not None:
            body = changed
            start["headers"] = [(name, value) for name, value in start.get("headers", [])
                                if name.lower() != b"content-length"] + [(b"content-length", str(len(body)).encode())]
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    await app(scope, receive, held)


def _login_answer(said: list[str]) -> Any:
    def rewrite(status: int, headers: Headers, body: bytes) -> bytes | None:
        if status != 400 or not said:
            return None
        return json.dumps({"detail": "Incorrect credentials.", "careloop_message": said[-1]}).encode()

    return rewrite


def _with_login_script(status: int, headers: Headers, body: bytes) -> bytes | None:
    if status != 200 or "text/html" not in headers.get("content-type", "") or headers.get("content-encoding"):
        return None
    return body.replace(b"</head>", LOGIN_PAGE_SCRIPT + b"</head>", 1)


UPLOAD_ROUTE = "/gradio_api/upload"  # where the page's upload buttons send files (Gradio's JavaScript client)


class UploadGate(Protocol):
    """Who may upload (``bot.access.AdminUploads``): the admin signed in with one of ``cookies``'
    sessions, or None; and the largest upload body, in bytes."""

    max_body: int

    def admin(self, cookies: dict[str, str]) -> str | None: ...


class RefusedRoutes:
    """Only the routes in ``ROUTES``; the rest are refused without reading the request's body.
    A login form is refused above ``LOGIN_MAX_BYTES`` (a megabyte username is never parsed, hashed
    or logged), and the signing-in client's address is noted for the login throttle. Uploads reach
    Gradio only from a signed-in admin session (``uploads``), up to ``uploads.max_body``."""

    UPLOADS = "careloop takes no file uploads."
    UNKNOWN = "No such route: careloop's pages are used through the web page."

    def __init__(self, app: ASGIApp, max_body: int = 1024 * 1024, uploads: UploadGate | None = None):
        self.app = app
        self.max_body = max_body
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path.rstrip("/").endswith("/upload"):
            return await self._upload(scope, receive, send)
        allowed = ROUTES.get(method)
        if method != "OPTIONS" and (allowed is None or not allowed.fullmatch(path)):
            return await _refuse(404, self.UNKNOWN)(scope, receive, send)
        if method == "POST":
            length = Headers(scope=scope).get("content-length", "")
            if not length.isdigit():
                return await _refuse(411, "Send the request with its length (Content-Length); "
                                     "careloop reads no body of unknown size.")(scope, receive, send)
            if int(length) > self.max_body:
                return await _refuse(413, f"The request is {int(length):,} bytes; careloop accepts at most "
                                     f"{self.max_body:,} (a chat message is at most a few thousand characters)."
                                     )(scope, receive, send)
            if path.rstrip("/") == "/login":
                if int(length) > LOGIN_MAX_BYTES:
                    return await _refuse(413, "A sign-in form is a username and a password; this one is too large."
                                         )(scope, receive, send)
                client = scope.get("client")
                LOGIN_CLIENT.set(client[0] if client else "unknown")
                said: list[str] = []
                LOGIN_MESSAGE.set(said)
                return await _rewritten(self.app, scope, receive, send, _login_answer(said))
            elif path == "/logout":
                return await self._logout(scope, receive, send, int(length))
        elif method == "GET" and path == "/":
            return await _rewritten(self.app, scope, receive, send, _with_login_script)
        elif HANDOUTS.refuses(path, _cookies(Headers(scope=scope))):
            return await _refuse(404, "No such file for this session: downloads are for the session that "
                                 "made them.")(scope, receive, send)
        await self.app(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's upload route for a signed-in admin's session (the Library tab), up to
        ``uploads.max_body``; 403 for everyone else and every other upload path, unread."""
        if self.uploads is None or scope["method"] != "POST" or scope["path"] != UPLOAD_ROUTE:
            return await _refuse(403, self.UPLOADS)(scope, receive, send)
        headers = Headers(scope=scope)
        # The session's account is looked up in the database (a role change applies at once), off
        # the event loop; only then is the declared length looked at, so others learn nothing of it.
        if await run_in_threadpool(self.uploads.admin, _cookies(headers)) is None:
            return await _refuse(403, self.UPLOADS)(scope, receive, send)
        length = headers.get("content-length", "")
        if not length.isdigit():
            return await _refuse(411, "Send the upload with its length (Content-Length); careloop reads no body "
                                 "of unknown size.")(scope, receive, send)
        if int(length) > self.uploads.max_body:
            reason = (f"The upload is {int(length) / 2**20:.1f} MiB; careloop takes at most "
                      f"{self.uploads.max_body / 2**20:.1f} MiB at once (the largest library document, "
                      "CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES): add a smaller file, or fewer files at a time.")
            return await _refuse(413, reason)(scope, receive, send)
        await self.app(scope, receive, send)

    async def _logout(self, scope: Scope, receive: Receive, send: Send, length: int) -> None:
        """``POST /logout`` with the session's CSRF token: Gradio's own logout (ends every session of
        the account), called as the GET it is; without the token, 403."""
        if length > LOGIN_MAX_BYTES:
            return await _refuse(413, "A sign-out form carries one token; this one is too large.")(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
        sent = parse_qs(body.decode("latin-1")).get("csrf_token", [""])[0]
        sessions = session_tokens(_cookies(Headers(scope=scope)))
        if not any(hmac.compare_digest(sent, csrf_token(token)) for token in sessions):
            return await _refuse(403, "Refused: sign out with the Sign out button of careloop's own page.")(
                scope, receive, send)

        async def no_body() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        await self.app({**scope, "method": "GET", "query_string": b""}, no_body, send)


def _netloc(origin: str) -> str:
    parts = urlsplit(origin.strip().lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    return host if port in (None, default) else f"{host}:{port}"


def _host_netloc(host: str) -> str:
    host = host.strip().lower()
    for default in (":80", ":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


class OriginGuard:
    """Refuses (403, with the reason) every request whose ``Origin`` is another site's; requests
    without one (a navigation, a script, gradio_client) pass. Own origins: the request's own Host
    (a same-origin call; behind a proxy that passes the Host header), and ``origins`` (the address
    served and CARELOOP_BOT_ALLOWED_ORIGINS), compared as host[:port]. Session cookies going out
    are made ``SameSite=Lax`` (Gradio sets ``None``)."""

    def __init__(self, app: ASGIApp, origins: Iterable[str] = ()):
        self.app = app
        self.origins = {_netloc(origin) for origin in origins} - {""}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None:
            netloc = _netloc(origin) if origin.strip().lower() != "null" else ""
            if not netloc or (netloc != _host_netloc(headers.get("host", "")) and netloc not in self.origins):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                shown = origin[:100]
                return await _refuse(403, f"Refused: a page of another site ({shown}) may not call careloop. "
                                     "If this is careloop's own address, add it to CARELOOP_BOT_ALLOWED_ORIGINS.")(
                    scope, receive, send)

        async def lax_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (name, re.sub(rb"(?i)samesite=none", b"SameSite=lax", value) if name.lower() == b"set-cookie"
                     else value) for name, value in message.get("headers", [])]
            await send(message)

        await self.app(scope, receive, lax_cookies)


def guard_origins(origins: Iterable[str]) -> Any:
    """A lifespan that wraps ``OriginGuard`` around the whole built middleware stack (Gradio's
    CORS included, which it adds after careloop's middleware and so would answer a preflight first).
    Starlette builds the stack on the first ASGI call, the lifespan's own, before any request."""
    origins = list(origins)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if app.middleware_stack is None:
            app.middleware_stack = app.build_middleware_stack()
        if not isinstance(app.middleware_stack, OriginGuard):
            app.middleware_stack = OriginGuard(app.middleware_stack, origins)
        yield

    return lifespan


def security_middleware(max_body: int = 1024 * 1024, uploads: UploadGate | None = None) -> list[Middleware]:
    """``app_kwargs={"middleware": ...}`` for ``Blocks.launch`` (the first wraps the others, so a
    refused upload carries the headers too); ``uploads``: who may upload (None: no one)."""
    return [Middleware(SecurityHeaders), Middleware(RefusedRoutes, max_body=max_body, uploads=uploads)]
