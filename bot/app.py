"""`careloop bot`: the Gradio app. Login required; each role sees its own tabs, and every handler
checks the role again on the server (``Access.require``), so calling an endpoint directly does not
get around a hidden tab. The page logic lives in chat.py, review.py and admin.py; this module only
wires it to components.
"""

from __future__ import annotations

import os

# Before gradio is imported: it reads these at import. Nothing leaves the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from bot.access import PAGES, Access, Refused, SessionTokens, Viewer  # noqa: E402
from bot.admin import Admin  # noqa: E402
from bot.chat import DOWN_REASONS, UP_REASONS, Chat, Conversation  # noqa: E402
from bot.errors import UserError  # noqa: E402
from bot.hardening import security_middleware  # noqa: E402
from bot.review import AXES, Review, ReviewState  # noqa: E402
from bot.safety import EDUCATIONAL_NOTICE, URGENT_CARE  # noqa: E402
from careloop.base_model import base_model_name  # noqa: E402
from careloop.db import sessions_for  # noqa: E402
from careloop.log import ensure_logging, get_logger  # noqa: E402
from careloop.settings import Settings, get_settings  # noqa: E402
from feedback.api import FeedbackAPI  # noqa: E402
from feedback.schemas import SAFETY_CATEGORIES  # noqa: E402
from serving.registry import Registry  # noqa: E402
from serving.rollout import open_client  # noqa: E402

log = get_logger(__name__)

# Keyboard shortcuts of the review page: 1-4 choose, Enter submits, S skips. Keys typed into a text
# field stay there (Ctrl/Cmd+Enter submits from one).
KEYBOARD = """
<script>
document.addEventListener("keydown", (event) => {
  const choice = document.getElementById("review-choice");
  if (!choice || choice.offsetParent === null) return;
  const el = event.target;
  const typing = el && (el.tagName === "TEXTAREA" || el.isContentEditable || el.tagName === "SELECT" ||
    (el.tagName === "INPUT" && !["radio", "checkbox", "button"].includes(el.type)));
  const click = (id) => { const b = document.getElementById(id); if (b) { event.preventDefault(); b.click(); } };
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey || !typing)) return click("review-submit");
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["1", "2", "3", "4"].includes(event.key)) {
    const options = choice.querySelectorAll("input[type=radio]");
    const option = options[Number(event.key) - 1];
    if (option) { event.preventDefault(); option.click(); }
  } else if (event.key === "s" || event.key === "S") {
    click("review-skip");
  }
});
</script>
"""
# Gradio answers a call from a page whose session has ended (signed out elsewhere, idle, too old)
# with 401 and shows only "Error"; say what happened and how to go on instead.
SESSION_ENDED = """
<script>
const careloopFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await careloopFetch(...args);
  const url = String((args[0] && args[0].url) || args[0]);
  if (response.status === 401 && url.includes("/gradio_api/") && document.getElementById("header") &&
      !document.getElementById("session-ended")) {
    const note = document.createElement("div");
    note.id = "session-ended";
    note.setAttribute("role", "alert");
    note.innerHTML = "<strong>Your session has ended</strong> (you signed out, or it was idle or open too " +
      "long). What you just sent was not saved. <a href='/'>Sign in again</a>";
    document.body.prepend(note);
  }
  return response;
};
</script>
"""
CSS = """
#session-ended { position: fixed; top: 0; left: 0; right: 0; z-index: 1000; padding: 12px 24px;
  background: #fde8e8; color: #7a1010; border-bottom: 2px solid #c0392b; font-size: 1.05em; }
#review-left, #review-right { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.careloop-notice { font-size: 0.9em; }
"""
SCORE_CHOICES = [1, 2, 3, 4, 5]
DEFAULT_SCORE = 3
HANDOUT_SECONDS = 600  # a handed-out copy is removed after this


@dataclass
class Services:
    settings: Settings
    access: Access
    chat: Chat
    review: Review
    admin: Admin
    feedback: FeedbackAPI

    def close(self) -> None:
        self.feedback.close()
        self.chat.client.close()


def open_services(settings: Settings) -> Services:
    sessions = sessions_for(settings.resolved_database_url)
    client = open_client(settings)
    feedback = FeedbackAPI(settings)
    registry = Registry(sessions, base_model_name(settings))
    return Services(settings, Access(sessions, settings.bot_login_attempts, settings.bot_login_lockout_seconds),
                    Chat(client, feedback, sessions, settings.bot_max_message_chars),
                    Review(feedback, sessions), Admin(settings, sessions, registry, client), feedback)


def handout(path: str | None) -> str | None:
    """A copy of ``path`` for Gradio to serve. Gradio serves every file under ``allowed_paths`` to
    anyone signed in, students included, so careloop's home (exports, run snapshots holding
    clinicians' corrections) is never one: a handler hands out a copy from the system temp dir,
    which Gradio moves into its cache under a name no one can guess."""
    if path is None:
        return None
    handouts = Path(tempfile.gettempdir()) / "careloop-handout"
    for old in handouts.glob("*"):  # Gradio has long since cached them
        if time.time() - old.stat().st_mtime > HANDOUT_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    folder = handouts / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    return shutil.copy(path, folder)


def build(services: Services) -> gr.Blocks:
    access, chat, review, admin = services.access, services.chat, services.review, services.admin

    def require(request: gr.Request, page: str) -> Viewer:
        try:
            return access.require(request.username, page)
        except Refused as exc:
            raise gr.Error(str(exc), print_exception=False) from None  # logged as access_refused, no traceback

    with gr.Blocks(title="careloop") as app:
        with gr.Row():
            header = gr.Markdown("## careloop", elem_id="header")
            gr.Button("Sign out", link="/logout", size="sm", scale=0, elem_id="sign-out")

        with gr.Tabs():
            # ----------------------------------------------------------------- chat
            with gr.Tab("Chat", id="chat", visible=False, elem_id="tab-chat") as chat_tab:
                gr.Markdown(f"_{EDUCATIONAL_NOTICE}_ {URGENT_CARE}", elem_classes="careloop-notice",
                            elem_id="chat-notice")
                serving_status = gr.Markdown(elem_id="serving-status")
                conversation = gr.State()  # set per visitor by on_load
                chatbot = gr.Chatbot(label="careloop", height=460, elem_id="chatbot", buttons=["copy"])
                with gr.Row():
                    message = gr.Textbox(placeholder="Ask a medical question (educational use)…", show_label=False,
                                         lines=2, max_lines=8, scale=8, elem_id="chat-input")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
                with gr.Row():
                    regenerate = gr.Button("Regenerate", size="sm", elem_id="chat-regenerate")
                    new_chat = gr.Button("New conversation", size="sm", elem_id="chat-new")
                with gr.Group(visible=False, elem_id="rating-panel") as rating_panel:
                    rating_title = gr.Markdown()
                    rating_index = gr.State(-1)
                    rating_event = gr.State("")
                    with gr.Row():
                        thumbs = gr.Radio([("👍 helpful", "up"), ("👎 not helpful", "down")], label="Your rating",
                                          elem_id="rating-thumbs")
                        reason = gr.Dropdown(list(DOWN_REASONS), label="Reason (optional)", allow_custom_value=False,
                                             elem_id="rating-reason")
                    comment = gr.Textbox(label="Comment (optional)", max_lines=4, elem_id="rating-comment")
                    with gr.Row():
                        send_rating = gr.Button("Send rating", variant="primary", size="sm", elem_id="rating-send")
                        cancel_rating = gr.Button("Cancel", size="sm")
                with gr.Accordion("Your conversations", open=False):
                    with gr.Row():
                        past = gr.Dropdown([], label="Conversation", scale=4, elem_id="history")
                        open_past = gr.Button("Open", size="sm", scale=1, elem_id="history-open")

            # ----------------------------------------------------------------- review
            with gr.Tab("Review", id="review", visible=False, elem_id="tab-review") as review_tab:
                review_state = gr.State()  # set per visitor by on_load
                figures = gr.Markdown(elem_id="review-figures")
                gr.Markdown("Keys: **1** A better · **2** B better · **3** tie · **4** both bad · **Enter** submit · "
                            "**S** skip. Scores start at 3 (neutral): change the ones that differ.",
                            elem_classes="careloop-notice")
                prompt = gr.Markdown(elem_id="review-prompt")
                score_inputs: list[gr.Radio] = []
                with gr.Row(equal_height=False):
                    for side, label in (("left", "Answer A"), ("right", "Answer B")):
                        with gr.Column(elem_id=f"review-{side}"):
                            gr.Markdown(f"### {label}")
                            shown = gr.Markdown(elem_id=f"review-{side}-text")
                            if side == "left":
                                left_text = shown
                            else:
                                right_text = shown
                            for axis in AXES:
                                score_inputs.append(gr.Radio(SCORE_CHOICES, value=DEFAULT_SCORE, label=axis,
                                                             elem_id=f"score-{side}-{axis}"))
                choice = gr.Radio([("1 · A is better", "left"), ("2 · B is better", "right"), ("3 · tie", "tie"),
                                   ("4 · both bad", "both_bad")], label="Which answer is better?",
                                  elem_id="review-choice")
                with gr.Row():
                    safety_flag = gr.Checkbox(label="Safety problem in either answer", elem_id="review-safety")
                    safety_category = gr.Dropdown(list(SAFETY_CATEGORIES), label="Safety category",
                                                  elem_id="review-safety-category")
                corrected = gr.Textbox(label="Corrected answer (optional): what a good answer says", lines=3,
                                       elem_id="review-corrected")
                with gr.Row():
                    submit = gr.Button("Submit (Enter)", variant="primary", elem_id="review-submit")
                    skip = gr.Button("Skip (S)", elem_id="review-skip")

            # ----------------------------------------------------------------- admin
            with gr.Tab("Admin", id="admin", visible=False, elem_id="tab-admin") as admin_tab:
                admin_message = gr.Markdown(elem_id="admin-message")
                with gr.Tab("Adapter versions"):
                    versions = gr.Dataframe(interactive=False, elem_id="versions", wrap=True)
                    with gr.Row():
                        version = gr.Dropdown([], label="Version", elem_id="version-select", scale=2)
                        action_reason = gr.Textbox(label="Reason (reject / roll back)", scale=3)
                    with gr.Row():
                        action_buttons = {action: gr.Button(label, size="sm", elem_id=f"action-{action}",
                                                            variant="stop" if action in ("reject", "rollback")
                                                            else "secondary")
                                          for action, label in (("promote", "Promote"), ("reject", "Reject"),
                                                                ("retire", "Retire"), ("rollback", "Roll back live"))}
                    pending_action = gr.State("")
                    with gr.Group(visible=False, elem_id="confirm-panel") as confirm_panel:
                        confirm_text = gr.Markdown()
                        with gr.Row():
                            confirm = gr.Button("Confirm", variant="stop", size="sm", elem_id="action-confirm")
                            cancel = gr.Button("Cancel", size="sm", elem_id="action-cancel")
                    report = gr.Markdown(elem_id="version-report")
                    report_figure = gr.Image(label="Evaluation tracks", type="filepath", interactive=False, visible=False)
                with gr.Tab("Training runs"):
                    runs = gr.Dataframe(interactive=False, elem_id="runs", wrap=True)
                    with gr.Row():
                        train = gr.Button("Start a training run", elem_id="train-start")
                        refresh_runs = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
                with gr.Tab("Feedback"):
                    volume = gr.LinePlot(x="day", y="count", color="kind", title="Feedback per day (30 days)",
                                         elem_id="volume")
                    per_annotator = gr.BarPlot(x="annotator", y="judgments", title="Judgments per annotator",
                                               elem_id="per-annotator")
                    agreement = gr.Markdown(elem_id="agreement")
                    annotators = gr.Dataframe(interactive=False, elem_id="annotators")
                with gr.Tab("Export"):
                    with gr.Row():
                        export_kind = gr.Radio(["sft", "dpo", "kto"], value="dpo", label="Dataset")
                        export_format = gr.Radio(["jsonl", "parquet", "hf"], value="jsonl", label="Format")
                    export_button = gr.Button("Export", elem_id="export")
                    export_file = gr.File(label="Download (zip with the manifest)", elem_id="export-file")
        ticker = gr.Timer(5.0)

        # ===================================================================== handlers
        def on_load(request: gr.Request) -> list[Any]:
            try:
                viewer = access.viewer(request.username)
            except Refused as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            visible = {page: viewer.may_open(page) for page in PAGES}
            return [f"## careloop · signed in as **{viewer.username}** ({viewer.role})",
                    gr.Tab(visible=visible["chat"]), gr.Tab(visible=visible["review"]),
                    gr.Tab(visible=visible["admin"]), chat.status(), gr.Dropdown(choices=chat.conversations(viewer)),
                    Conversation(), ReviewState()]

        app.load(on_load, None, [header, chat_tab, review_tab, admin_tab, serving_status, past, conversation,
                                 review_state], api_name=False)

        # ----- chat -----
        def ask(text: str, state: Conversation, request: gr.Request):
            viewer = require(request, "chat")
            state = state or Conversation()  # API clients do not run on_load
            try:
                for current in chat.answer(viewer, state, text):
                    yield current, current.display(), ""
            except UserError as exc:
                gr.Warning(str(exc))
                yield state, state.display(), text

        def again(state: Conversation, request: gr.Request):
            viewer = require(request, "chat")
            state = state or Conversation()
            try:
                for current in chat.regenerate(viewer, state):
                    yield current, current.display()
            except UserError as exc:
                gr.Warning(str(exc))
                yield state, state.display()

        def history_choices(request: gr.Request) -> gr.Dropdown:
            return gr.Dropdown(choices=chat.conversations(require(request, "chat")))

        asked = [send.click(ask, [message, conversation], [conversation, chatbot, message], api_name="chat"),
                 message.submit(ask, [message, conversation], [conversation, chatbot, message], api_name=False)]
        regenerated = regenerate.click(again, [conversation], [conversation, chatbot], api_name="regenerate")
        for event in asked:
            event.then(history_choices, None, [past], api_name=False)
        def stopped(state: Conversation | None) -> list:
            return state.display() if state else []

        stop.click(stopped, [conversation], [chatbot], cancels=[*asked, regenerated], api_name=False)

        def fresh(request: gr.Request) -> tuple[Conversation, list]:
            require(request, "chat")
            return Conversation(), []

        new_chat.click(fresh, None, [conversation, chatbot], api_name="new_conversation")
        chatbot.clear(fresh, None, [conversation, chatbot], api_name=False)  # the chat's own bin icon

        def reopen(conversation_id: str, request: gr.Request) -> tuple[Conversation, list]:
            try:
                state = chat.reopen(require(request, "chat"), conversation_id)
            except UserError as exc:
                gr.Warning(str(exc))
                return gr.skip(), gr.skip()
            return state, state.display()

        open_past.click(reopen, [past], [conversation, chatbot], api_name="open_conversation")

        def liked(data: gr.LikeData, request: gr.Request):
            require(request, "chat")
            up = data.liked is True
            return (gr.Group(visible=True), f"Rating answer {data.index // 2 + 1 if isinstance(data.index, int) else ''}",
                    data.index if isinstance(data.index, int) else data.index[0], str(uuid.uuid4()),
                    "up" if up else "down", gr.Dropdown(choices=list(UP_REASONS if up else DOWN_REASONS), value=None),
                    "")

        chatbot.like(liked, None, [rating_panel, rating_title, rating_index, rating_event, thumbs, reason, comment],
                     api_name=False)

        def rate(state: Conversation, index: int, event_id: str, thumb: str, why: str | None, text: str,
                 request: gr.Request):
            viewer = require(request, "chat")
            state = state or Conversation()
            try:
                chat.rate(viewer, state, int(index), thumb, why or "", text, uuid.UUID(event_id) if event_id else None)
            except UserError as exc:
                gr.Warning(str(exc))
                return gr.skip()
            gr.Info("Thank you: your rating was recorded.")
            return gr.Group(visible=False)

        send_rating.click(rate, [conversation, rating_index, rating_event, thumbs, reason, comment], [rating_panel],
                          api_name="rate")
        cancel_rating.click(lambda: gr.Group(visible=False), None, [rating_panel], api_name=False)

        def tick(request: gr.Request) -> str:
            if not request.username:
                return gr.skip()
            return chat.status()

        ticker.tick(tick, None, [serving_status], api_name=False, show_progress="hidden")

        # ----- review -----
        review_outputs = [figures, prompt, left_text, right_text, *score_inputs, choice, safety_flag, safety_category,
                          corrected]

        def show(viewer: Viewer, state: ReviewState) -> list[Any]:
            item = review.next(viewer, state)
            blank = [DEFAULT_SCORE] * len(score_inputs) + [None, False, None, ""]
            if item is None:
                return [review.figures(viewer, state), "**The queue is empty.** New items arrive as students ask "
                        "questions; check back later.", "", "", *blank]
            return [review.figures(viewer, state), f"### Question\n\n{item.item.prompt}", item.left, item.right, *blank]

        def open_review(state: ReviewState | None, request: gr.Request) -> list[Any]:
            viewer = require(request, "review")
            state = state or ReviewState()
            return [state, *show(viewer, state)]

        review_tab.select(open_review, [review_state], [review_state, *review_outputs], api_name="review_next",
                          show_progress="hidden")

        judged_inputs = {review_state, *score_inputs, choice, safety_flag, safety_category, corrected}

        def judge(values: dict[Any, Any], request: gr.Request) -> list[Any]:
            viewer = require(request, "review")
            state = values[review_state] or ReviewState()
            scores = [values[component] for component in score_inputs]
            half = len(AXES)
            try:
                review.submit(viewer, state, values[choice], dict(zip(AXES, scores[:half], strict=True)),
                              dict(zip(AXES, scores[half:], strict=True)), values[safety_flag],
                              values[safety_category], values[corrected])
            except UserError as exc:
                gr.Warning(str(exc))
                return [gr.skip()] * (1 + len(review_outputs))
            return [state, *show(viewer, state)]

        # "always_last": a press that lands while the previous submit is finishing runs after it;
        # Gradio's default ("once") silently drops it, and a fast reviewer's judgment with it.
        submit.click(judge, judged_inputs, [review_state, *review_outputs], api_name="review_submit",
                     show_progress="hidden", trigger_mode="always_last")

        def pass_item(state: ReviewState | None, request: gr.Request) -> list[Any]:
            viewer = require(request, "review")
            state = state or ReviewState()
            review.skip(viewer, state)
            return [state, *show(viewer, state)]

        skip.click(pass_item, [review_state], [review_state, *review_outputs], api_name="review_skip",
                   show_progress="hidden", trigger_mode="always_last")

        # ----- admin -----
        def overview(request: gr.Request) -> list[Any]:
            require(request, "admin")
            frame, summary = admin.annotators()
            return [admin.versions(), gr.Dropdown(choices=admin.version_names()), admin.runs(), admin.volume(),
                    frame, frame, summary]

        overview_outputs = [versions, version, runs, volume, per_annotator, annotators, agreement]
        admin_tab.select(overview, None, overview_outputs, api_name="admin_overview")
        def refreshed_runs(request: gr.Request):
            require(request, "admin")
            return admin.runs()

        refresh_runs.click(refreshed_runs, None, [runs], api_name="admin_runs")

        def show_report(name: str | None, request: gr.Request) -> tuple[str, gr.Image]:
            require(request, "admin")
            try:
                text, figure = admin.report(name)
            except UserError as exc:
                gr.Warning(str(exc))
                return gr.skip(), gr.skip()
            return text, gr.Image(value=handout(figure), visible=figure is not None)

        version.change(show_report, [version], [report, report_figure], api_name="admin_report")

        def ask_to_confirm(action: str):
            def handler(name: str | None, request: gr.Request) -> list[Any]:
                require(request, "admin")
                try:
                    text = admin.confirmation(action, name)
                except UserError as exc:
                    gr.Warning(str(exc))
                    return [gr.skip()] * 3
                return [action, gr.Group(visible=True), f"**Confirm:** {text}"]
            return handler

        for action, button in action_buttons.items():
            button.click(ask_to_confirm(action), [version], [pending_action, confirm_panel, confirm_text],
                         api_name=False)

        def confirmed(action: str, name: str | None, why: str, request: gr.Request) -> list[Any]:
            viewer = require(request, "admin")
            try:
                done = admin.act(viewer, action, name, why)
            except UserError as exc:
                gr.Warning(str(exc))
                return [gr.skip()] * 5
            return ["", gr.Group(visible=False), done, admin.versions(), gr.Dropdown(choices=admin.version_names())]

        confirm.click(confirmed, [pending_action, version, action_reason],
                      [pending_action, confirm_panel, admin_message, versions, version], api_name="admin_act")
        cancel.click(lambda: ["", gr.Group(visible=False)], None, [pending_action, confirm_panel], api_name=False)

        def start_training(request: gr.Request) -> list[Any]:
            viewer = require(request, "admin")
            try:
                return [admin.start_training(viewer), admin.runs()]
            except UserError as exc:
                gr.Warning(str(exc))
                return [gr.skip()] * 2

        train.click(start_training, None, [admin_message, runs], api_name="admin_train")

        def export(kind: str, fmt: str, request: gr.Request) -> str:
            viewer = require(request, "admin")
            try:
                return handout(admin.export(viewer, kind, fmt))
            except UserError as exc:
                gr.Warning(str(exc))
                return gr.skip()

        export_button.click(export, [export_kind, export_format], [export_file], api_name="admin_export")
    return app


def server_options() -> dict[str, Any]:
    """FastAPI options of the bot's server: security headers, and no schema of every route for
    anyone to read (FastAPI serves /openapi.json and /docs by default, without sign-in)."""
    return {"middleware": security_middleware(), "openapi_url": None, "docs_url": None, "redoc_url": None}


def main(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    settings = settings or get_settings()
    ensure_logging(settings.log_level, settings.log_json)
    services = open_services(settings)
    app = build(services)
    # Streams wait on serving, not on this process: many may run at once.
    app.queue(default_concurrency_limit=4 * settings.max_batch)
    host, port = host or settings.bot_host, port or settings.bot_port
    log.info("bot_starting", host=host, port=port)
    try:
        app.launch(server_name=host, server_port=port, auth=services.access.login,
                   auth_message="careloop: sign in with the account your administrator gave you. "
                   "For medical education only; not medical advice.",
                   head=KEYBOARD + SESSION_ENDED, css=CSS, show_error=False, quiet=True, ssr_mode=False, pwa=False,
                   mcp_server=False, enable_monitoring=False, footer_links=[], prevent_thread_lock=True,
                   app_kwargs=server_options())
        server = app.server_app
        server.tokens = SessionTokens(settings.bot_session_idle_seconds, settings.bot_session_max_seconds,
                                      signed_in=server.tokens)
        app.block_thread()
    finally:
        services.close()
