"""The chat tab: streamed answers, regenerate and stop, ratings under each answer, the student's own
past conversations, and a status line on the model server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import gradio as gr

from bot.chat import DOWN_REASONS, UP_REASONS, Chat, Conversation
from bot.errors import UserError
from bot.pages import Require, own
from bot.safety import STANDING_NOTICE


@dataclass
class ChatPage:
    """What the app needs of the chat tab: the tab, and what its first load fills in."""

    tab: gr.Tab
    status: gr.Markdown
    history: gr.Dropdown
    conversation: gr.State
    chat: Chat

    def follow_status(self, timer: gr.Timer) -> None:
        """Refresh the status line on each tick of ``timer``."""

        def tick(request: gr.Request) -> str:
            if not request.username:
                return gr.skip()
            return self.chat.status()

        timer.tick(tick, None, [self.status], api_name=False, show_progress="hidden")


# The chat box's live count (code points, as the server counts them), "n / limit characters".
COUNTER_JS = """(text) => {
  const used = [...(text || "")].length, limit = LIMIT;
  const left = limit - used;
  return `${used.toLocaleString("en")} / ${limit.toLocaleString("en")} characters` +
    (left <= limit / 10 ? ` (${left.toLocaleString("en")} left)` : "");
}"""


# The rating form opens under the chat, often below the visible area (issue 29, 9): bring its Send
# button into view once Gradio has shown it (the shown one: Gradio may keep a hidden copy). Gradio
# renders it a moment after this runs, later on a busy machine: look every 50 ms for up to 5 s.
SCROLL_TO_RATING_JS = """() => {
  const started = Date.now();
  const look = () => {
    const send = [...document.querySelectorAll('#rating-send')].find((e) => e.offsetParent !== null);
    if (send) send.scrollIntoView({block: 'nearest'});
    else if (Date.now() - started < 5000) setTimeout(look, 50);
  };
  setTimeout(look, 50);
}"""


def _stop(visible: bool) -> gr.Button:
    return gr.Button(visible=visible)


def _fresh(username: str) -> Conversation:
    return Conversation(owner=username)


def build_chat(chat: Chat, require: Require) -> ChatPage:
    with gr.Tab("Chat", id="chat", visible=False, elem_id="tab-chat") as tab:
        gr.Markdown(f"_{STANDING_NOTICE}_", elem_classes="careloop-notice", elem_id="chat-notice")
        serving_status = gr.Markdown(elem_id="serving-status")
        conversation = gr.State()  # set per visitor by the app's load
        chatbot = gr.Chatbot(label="careloop", height=460, elem_id="chatbot", buttons=["copy"])
        with gr.Row():
            with gr.Column(scale=8):
                # One line that grows to eight: Gradio then sends on Enter and starts a new line on
                # Shift+Enter, the chat convention (with lines=2 it was the other way round; issue 29, 8).
                message = gr.Textbox(placeholder="Ask a medical question (educational use)… Enter sends, "
                                     "Shift+Enter starts a new line", show_label=False, lines=1, max_lines=8,
                                     elem_id="chat-input", max_length=chat.max_chars)
                counter = gr.Markdown(f"0 / {chat.max_chars:,} characters", elem_id="chat-counter",
                                      elem_classes="careloop-notice")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop",
                             visible=False)  # while an answer streams
        with gr.Row():
            regenerate = gr.Button("Regenerate", size="sm", elem_id="chat-regenerate")
            new_chat = gr.Button("New conversation", size="sm", elem_id="chat-new")
        with gr.Group(visible=False, elem_id="rating-panel") as rating_panel:
            rating_title = gr.Markdown()
            rating_index = gr.State(-1)
            rating_event = gr.State("")
            with gr.Row():
                # Geometric shapes, not emoji: they render with the fonts every system has (DejaVu).
                thumbs = gr.Radio([("▲ Helpful", "up"), ("▼ Not helpful", "down")], label="Your rating",
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

    # Stop shows only while an answer is on its way: the first output of a stream shows it, the last hides it.
    def ask(text: str, state: Conversation, request: gr.Request):
        viewer = require(request, "chat")
        state = own(state, viewer, _fresh)  # API clients do not run the app's load
        yield gr.skip(), gr.skip(), gr.skip(), _stop(True)  # also while waiting for the first words
        # The box is emptied once, when the question shows in the chat, and not touched again: what the
        # student types while the answer streams is the next question (every chunk used to wipe it).
        emptied = False
        try:
            for current in chat.answer(viewer, state, text):
                yield current, current.display(), gr.skip() if emptied else "", gr.skip()
                emptied = True
        except UserError as exc:
            gr.Warning(str(exc))
            yield state, state.display(), gr.skip() if emptied else text, _stop(False)
            return
        yield state, state.display(), gr.skip() if emptied else "", _stop(False)

    def again(state: Conversation, request: gr.Request):
        viewer = require(request, "chat")
        state = own(state, viewer, _fresh)
        yield gr.skip(), gr.skip(), _stop(True)
        try:
            for current in chat.regenerate(viewer, state):
                yield current, current.display(), gr.skip()
        except UserError as exc:
            gr.Warning(str(exc))
        yield state, state.display(), _stop(False)

    def history_choices(request: gr.Request) -> gr.Dropdown:
        return gr.Dropdown(choices=chat.conversations(require(request, "chat")))

    asked = [send.click(ask, [message, conversation], [conversation, chatbot, message, stop], api_name="chat"),
             message.submit(ask, [message, conversation], [conversation, chatbot, message, stop], api_name=False)]
    regenerated = regenerate.click(again, [conversation], [conversation, chatbot, stop], api_name="regenerate")
    # The count as the student types, in the browser (no call to the server per key).
    message.change(None, [message], [counter], js=COUNTER_JS.replace("LIMIT", str(chat.max_chars)))
    for event in asked:
        event.then(history_choices, None, [past], api_name=False)

    def stopped(state: Conversation | None, request: gr.Request) -> tuple[list, gr.Button]:
        return chat.stop(own(state, require(request, "chat"), _fresh)).display(), _stop(False)

    stop.click(stopped, [conversation], [chatbot, stop], cancels=[*asked, regenerated], api_name=False)

    def fresh(request: gr.Request) -> tuple[Conversation, list]:
        return Conversation(owner=require(request, "chat").username), []

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
                 api_name=False).then(None, None, None, js=SCROLL_TO_RATING_JS)

    def rate(state: Conversation, index: int, event_id: str, thumb: str, why: str | None, text: str,
             request: gr.Request):
        viewer = require(request, "chat")
        state = own(state, viewer, _fresh)
        try:
            chat.rate(viewer, state, int(index), thumb, why or "", text, uuid.UUID(event_id) if event_id else None)
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        gr.Info("Thank you: your rating was recorded. It replaces any earlier rating you gave this answer.")
        return gr.Group(visible=False)

    send_rating.click(rate, [conversation, rating_index, rating_event, thumbs, reason, comment], [rating_panel],
                      api_name="rate")
    cancel_rating.click(lambda: gr.Group(visible=False), None, [rating_panel], api_name=False)
    return ChatPage(tab, serving_status, past, conversation, chat)
