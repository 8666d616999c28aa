"""The chat tab: streamed answers, regenerate and stop, ratings under each answer, the student's own
past conversations, and a status line on the model server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import gradio as gr

from bot.chat import DOWN_REASONS, UP_REASONS, Chat, Conversation
from bot.errors import UserError
from bot.pages import Require, own
from bot.safety import EDUCATIONAL_NOTICE, URGENT_CARE


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


def _fresh(username: str) -> Conversation:
    return Conversation(owner=username)


def build_chat(chat: Chat, require: Require) -> ChatPage:
    with gr.Tab("Chat", id="chat", visible=False, elem_id="tab-chat") as tab:
        gr.Markdown(f"_{EDUCATIONAL_NOTICE}_ {URGENT_CARE}", elem_classes="careloop-notice", elem_id="chat-notice")
        serving_status = gr.Markdown(elem_id="serving-status")
        conversation = gr.State()  # set per visitor by the app's load
        chatbot = gr.Chatbot(label="careloop", height=460, elem_id="chatbot", buttons=["copy"])
        with gr.Row():
            message = gr.Textbox(placeholder="Ask a medical question (educational use)…", show_label=False,
                                 lines=2, max_lines=8, scale=8, elem_id="chat-input", max_length=chat.max_chars)
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

    def ask(text: str, state: Conversation, request: gr.Request):
        viewer = require(request, "chat")
        state = own(state, viewer, _fresh)  # API clients do not run the app's load
        try:
            for current in chat.answer(viewer, state, text):
                yield current, current.display(), ""
        except UserError as exc:
            gr.Warning(str(exc))
            yield state, state.display(), text

    def again(state: Conversation, request: gr.Request):
        viewer = require(request, "chat")
        state = own(state, viewer, _fresh)
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

    def stopped(state: Conversation | None, request: gr.Request) -> list:
        return own(state, require(request, "chat"), _fresh).display()

    stop.click(stopped, [conversation], [chatbot], cancels=[*asked, regenerated], api_name=False)

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
                 api_name=False)

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
