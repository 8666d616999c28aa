"""`careloop bot`: the Gradio app. Login required; each role sees its own tabs, and every handler
checks the role again on the server (``Access.require``), so calling an endpoint directly does not
get around a hidden tab. The chat and review tabs are built in ``bot/pages/`` over their page's
Gradio-free logic (``bot/chat.py``, ``review.py``), the admin tab in ``bot/admin/`` (each of its tabs
beside its logic); this module opens the services, assembles the tabs, shows each viewer their own on
first load, and launches the server.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads these at import. Nothing leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from adapters.registry import Registry  # noqa: E402
from adapters.rollout import open_client  # noqa: E402
from bot.access import Access, AdminUploads, Refused, SessionTokens, Viewer  # noqa: E402
from bot.admin import Admin, build_admin  # noqa: E402
from bot.chat import Chat, ChatLimits, Conversation  # noqa: E402
from bot.hardening import UploadGate, csrf_token, guard_origins, security_middleware, session_tokens  # noqa: E402
from bot.pages import guard  # noqa: E402
from bot.pages.account import build_password_panel  # noqa: E402
from bot.pages.chat import build_chat  # noqa: E402
from bot.pages.review import KEYBOARD, build_review  # noqa: E402
from bot.review import Filling, Review, ReviewState  # noqa: E402
from bot.screen import RequestScreen  # noqa: E402
from careloop.base_model import base_model_name  # noqa: E402
from careloop.db import sessions_for  # noqa: E402
from careloop.decoding import decoding_for  # noqa: E402
from careloop.log import ensure_logging, get_logger  # noqa: E402
from careloop.private import private_dir  # noqa: E402
from careloop.settings import Settings, get_settings  # noqa: E402
from feedback.producer import FeedbackProducer  # noqa: E402
from library.index import Retriever  # noqa: E402

log = get_logger(__name__)

# Gradio answers a call from a page whose session has ended (signed out elsewhere, idle, too old)
# with 401, marks every output of the call with a red "Error" badge that hides what it shows (the
# typed question among them) and says nothing else. Instead: say what happened, hide the badges so
# the question stays in view, and keep it (in this tab's sessionStorage, with the account's name)
# across signing in again, where it is put back in the chat box for the same account only.
SESSION_ENDED = """
<script>
(() => {
  const draftKey = "careloop-draft";
  const account = () => {
    const header = document.getElementById("header");
    const match = header && header.innerText.match(/signed in as (\\S+)/);
    return match ? match[1] : "";
  };
  const chatBox = () => document.querySelector("#chat-input textarea");
  const careloopFetch = window.fetch;
  window.fetch = async (...args) => {
    const response = await careloopFetch(...args);
    const url = String((args[0] && args[0].url) || args[0]);
    if (response.status === 401 && url.includes("/gradio_api/") && document.getElementById("header") &&
        !document.getElementById("session-ended")) {
      document.body.classList.add("careloop-ended");
      const note = document.createElement("div");
      note.id = "session-ended";
      note.setAttribute("role", "alert");
      note.innerHTML = "<strong>Your session has ended</strong> (you signed out, or it was idle or open too " +
        "long). What you just sent was not saved; what is in the chat box stays there and is put back " +
        "after you sign in again. <a href='/' id='sign-in-again' class='lg primary sm'>Sign in again</a>";
      document.body.prepend(note);
    }
    return response;
  };
  // Leaving the ended page (Sign in again, a reload): keep the chat box's text for the same account.
  window.addEventListener("pagehide", () => {
    const box = chatBox();
    if (document.body.classList.contains("careloop-ended") && box && box.value.trim()) {
      sessionStorage.setItem(draftKey, JSON.stringify({account: account(), text: box.value}));
    }
  });
  // After signing in again: the kept question back in the chat box, for the account that typed it.
  const restore = setInterval(() => {
    const kept = sessionStorage.getItem(draftKey);
    if (!kept) return clearInterval(restore);
    const box = chatBox();
    const who = account();
    if (!box || !who) return;
    clearInterval(restore);
    sessionStorage.removeItem(draftKey);
    const draft = JSON.parse(kept);
    if (draft.account !== who || box.value) return;
    Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(box, draft.text);
    box.dispatchEvent(new Event("input", {bubbles: true}));
  }, 250);
})();
</script>
"""
CSS = """
#session-ended { position: fixed; top: 0; left: 0; right: 0; z-index: 1000; padding: 12px 24px;
  background: #fde8e8; color: #7a1010; border-bottom: 2px solid #c0392b; font-size: 1.05em; }
#sign-in-again { margin-left: 12px; padding: 4px 14px; border-radius: 6px; background: #c0392b; color: white;
  text-decoration: none; font-weight: 600; }
.careloop-ended [data-testid="status-tracker"] { display: none !important; }
#review-left, #review-right { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.careloop-notice { font-size: 0.9em; }
"""


@dataclass
class Services:
    settings: Settings
    access: Access
    chat: Chat
    review: Review
    admin: Admin
    feedback: FeedbackProducer
    tokens: SessionTokens  # installed as the server's session table at launch

    def close(self) -> None:
        self.feedback.close()
        self.chat.client.close()


def open_services(settings: Settings) -> Services:
    sessions = sessions_for(settings.resolved_database_url)
    client = open_client(settings)
    feedback = FeedbackProducer(settings)
    registry = Registry(sessions, base_model_name(settings))
    limits = ChatLimits(settings.bot_chat_per_minute, settings.bot_chat_concurrent)
    retriever = Retriever(settings, sessions) if settings.retrieval_enabled else None
    access = Access(sessions, settings.bot_login_attempts, settings.bot_login_lockout_seconds)
    return Services(settings, access,
                    Chat(client, feedback, sessions, settings.bot_max_message_chars, limits, retriever,
                         settings.retrieval_passage_chars, decoding_for(settings),
                         RequestScreen() if settings.screen_requests else None),
                    Review(feedback, sessions, Filling(settings.redis_url, settings.review_fill_interval_seconds,
                                                       settings.review_fill_soon_seconds)),
                    Admin(settings, sessions, registry, client), feedback,
                    SessionTokens(settings.bot_session_idle_seconds, settings.bot_session_max_seconds,
                                  access.sessions_valid_from))


def build(services: Services) -> gr.Blocks:
    """The whole page: a header, one tab per page (hidden until the first load shows the viewer's own),
    and the status timer."""
    access = services.access
    require = guard(access, services.tokens)
    keep = services.settings.bot_download_seconds
    # Files handed to the browser (exports), and uploads no handler read, are deleted from Gradio's
    # cache `keep` seconds after (the Library tab deletes the documents it reads at once).
    with gr.Blocks(title="careloop", delete_cache=(min(60, keep), keep)) as app:
        with gr.Row():
            header = gr.Markdown("## careloop", elem_id="header")
            # A POST form; its value, the session's CSRF token, is filled in on load.
            sign_out = gr.HTML("", html_template=SIGN_OUT, elem_id="sign-out", padding=False)
        password = build_password_panel()
        with gr.Tabs():
            chat = build_chat(services.chat, require)
            review = build_review(services.review, require)
            admin_tab = build_admin(services.admin, require, services.settings.bot_status_refresh_seconds,
                                    elsewhere=[chat.tab, review.tab])
        chat.follow_status(gr.Timer(services.settings.bot_status_refresh_seconds))

        def pages_for(viewer: Viewer) -> list[Any]:
            """The password form, or the viewer's own tabs once no temporary password stands in the way."""
            return [gr.Group(visible=viewer.must_change_password),
                    *(gr.Tab(visible=viewer.may_open(page)) for page in ("chat", "review", "admin"))]

        def on_load(request: gr.Request) -> list[Any]:
            try:
                viewer = access.viewer(request.username)
            except Refused as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            sessions = session_tokens(dict(request.cookies))
            services.tokens.touch(sessions)  # opening the page is a user action
            return [f"## careloop · signed in as **{viewer.username}** ({viewer.role})", sign_out_form(sessions),
                    *pages_for(viewer), services.chat.status(),
                    gr.Dropdown(choices=services.chat.conversations(viewer)), Conversation(owner=viewer.username),
                    ReviewState(owner=viewer.username)]

        app.load(on_load, None, [header, sign_out, password.panel, chat.tab, review.tab, admin_tab, chat.status,
                                 chat.history, chat.conversation, review.state], api_name=False)

        def change_password(current: str | None, new: str | None, repeated: str | None,
                            request: gr.Request) -> list[Any]:
            try:
                viewer, changed = access.change_password(request.username, current or "", new or "", repeated or "")
            except Refused as exc:
                gr.Warning(str(exc))
                return [gr.skip()] * 7
            sessions = session_tokens(dict(request.cookies))
            services.tokens.renew(sessions, changed)  # the account's other sessions end; this one goes on
            services.tokens.touch(sessions)
            gr.Info("Your password is set. Use it from now on.")
            return ["", "", "", *pages_for(viewer)]

        password.submit.click(change_password, password.fields,
                              [*password.fields, password.panel, chat.tab, review.tab, admin_tab],
                              api_name="change_password")
    return app


# The Sign out button: a POST form carrying the CSRF token of the page's session (``bot.hardening``:
# a GET, or a POST without it, cannot sign anyone out).
SIGN_OUT = ('<form method="post" action="/logout" style="margin:0">'
            '<input type="hidden" name="csrf_token" value="${value}">'
            '<button type="submit" class="lg secondary sm" id="sign-out-button">Sign out</button></form>')


def sign_out_form(sessions: list[str]) -> str:
    """The value of the Sign out form: the CSRF token of the page's session."""
    return csrf_token(sessions[0]) if sessions else ""


def server_options(settings: Settings | None = None, uploads: UploadGate | None = None) -> dict[str, Any]:
    """FastAPI options of the bot's server: security headers, the routes the page uses only, uploads
    from signed-in admins only (``uploads``; None: from no one), requests from the bot's own origin
    only (``bot.hardening``), and no schema of every route for anyone to read (FastAPI serves
    /openapi.json and /docs by default, without sign-in)."""
    settings = settings or get_settings()
    origins = [*settings.bot_allowed_origins, f"http://{settings.bot_host}:{settings.bot_port}"]
    if settings.bot_host in ("127.0.0.1", "0.0.0.0", "::", "::1"):
        origins.append(f"http://localhost:{settings.bot_port}")
    return {"middleware": security_middleware(settings.bot_max_request_bytes, uploads),
            "lifespan": guard_origins(origins), "openapi_url": None, "docs_url": None, "redoc_url": None}


def _warm_screen(screen: RequestScreen) -> None:
    """Load the request screen at start; a failure is logged here and again by the chat (which then lets
    questions through), so the bot still starts without the embedding model."""
    try:
        screen.warm_up()
    except Exception as exc:  # noqa: BLE001 - logged; the chat says the same on the first question
        log.error("request_screen_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])


def main(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    settings = settings or get_settings()
    ensure_logging(settings.log_level, settings.log_json)
    # Gradio's file cache (downloads, admins' uploads) in the data directory, owner-only, not the shared
    # system temp dir.
    os.environ["GRADIO_TEMP_DIR"] = str(private_dir(settings.home / "gradio-cache"))
    services = open_services(settings)
    app = build(services)
    # Streams wait on serving, not on this process: many may run at once; beyond them at most
    # bot_queue_max_size wait (more are told the server is busy) instead of piling up in memory.
    app.queue(default_concurrency_limit=4 * settings.max_batch, max_size=settings.bot_queue_max_size)
    host, port = host or settings.bot_host, port or settings.bot_port
    log.info("bot_starting", host=host, port=port)
    uploads = AdminUploads(services.access, services.tokens, settings.library_max_document_bytes)
    try:
        # max_file_size: the page refuses a larger file before sending it, saying so (the server would
        # refuse it unread: bot.hardening).
        app.launch(server_name=host, server_port=port, auth=services.access.login_async,
                   max_file_size=settings.library_max_document_bytes,
                   auth_message="careloop: sign in with the account your administrator gave you. "
                   "For medical education only; not medical advice.",
                   head=KEYBOARD + SESSION_ENDED, css=CSS, show_error=False, quiet=True, ssr_mode=False, pwa=False,
                   mcp_server=False, enable_monitoring=False, footer_links=[], prevent_thread_lock=True,
                   app_kwargs=server_options(settings.model_copy(update={"bot_host": host, "bot_port": port}),
                                             uploads))
        server = app.server_app
        if services.chat.retriever is not None:  # load (or build) the index now, not in the first question
            threading.Thread(target=services.chat.retriever.warm_up, name="careloop-library", daemon=True).start()
        if services.chat.screen is not None:  # load the embedding model now, not in the first question
            threading.Thread(target=_warm_screen, args=(services.chat.screen,), name="careloop-screen",
                             daemon=True).start()
        for token, username in server.tokens.items():
            services.tokens[token] = username
        server.tokens = services.tokens
        app.block_thread()
    finally:
        services.close()
