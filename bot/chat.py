"""The chat page's logic, apart from Gradio: conversations, streamed answers, ratings, history.

With retrieval on, each question is searched in the library first and the answer is written from
the passages found (``library.grounding``), which are listed under it as numbered sources; when none
is relevant the answer says so. When the library cannot be searched (its data or index unreadable)
the student still gets the model's answer, with a note that sources were unavailable, and the
error is logged once per outage, not once per question. Turns are logged through
``feedback.producer`` (outbox first), with the passages an answer was given, so chat keeps working
while the broker is down. A question whose answer never started (serving down, or the request
refused) is not logged; the page keeps it in the input box to send again. A conversation longer
than the model's context is answered from its latest turns that leave the answer its full length (the
oldest left out, and the answer says how many), as chat products window their history; only a
question that alone leaves too little room gets a shorter answer.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from bot.access import Viewer
from bot.errors import UserError
from bot.rendering import literal, sources_markdown, untrusted
from bot.safety import answer_footer, urgent_notice
from bot.screen import SCREEN_MODEL, RequestScreen, refusal
from bot.screen import notice as screen_notice
from careloop.db import utcnow
from careloop.decoding import DEFAULT, Decoding
from careloop.log import get_logger
from feedback import history
from feedback.producer import FeedbackProducer, FeedbackUnavailable, InvalidFeedback
from library.grounding import grounded_messages, unlisted_citations_note, unlisted_citations_removed
from library.index import Passage, Retriever
from serving.client import ChatDelta, ContextExceeded, ServingClient, ServingRejected, ServingUnavailable

log = get_logger(__name__)

DOWN_REASONS = ("inaccurate", "unsafe", "missed an emergency", "unhelpful", "incomplete", "off topic", "other")
UP_REASONS = ("accurate", "clear", "helpful", "other")
DEMO_CACHE_SECONDS = 30.0
# An answer whose stream was closed before its end (shown live, and when the conversation is reopened).
CUT_OFF = "cut off before it finished (Stop was pressed, or the page was closed or reloaded)"
CUT_OFF_STORED = "this answer was cut off before it finished"
SCREENED_NOTE = ("The request screen answered this question, not the model: it reads as a request for help with "
                 "harm. Clinicians who review questions see it marked.")
# Tokens a chat template adds around each message (role markers), for estimating what to leave out.
MESSAGE_OVERHEAD_TOKENS = 4
SOURCES_UNAVAILABLE = ("The library could not be searched just now, so this answer is the model's alone and cites "
                       "no source: check it against a trusted reference.")


@dataclass
class Turn:
    role: str
    content: str
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    model: str = ""  # the version that answered (assistant turns)
    demo: bool = False
    notice: str | None = None  # the urgent-care pointer shown above an answer
    logged: bool = False
    done: bool = True  # False while the answer is still streaming
    interrupted: str = ""  # why an answer stopped early, if it did
    passages: list[Passage] | None = None  # the passages the answer was given; None: retrieval off or failed
    library_unavailable: bool = False  # retrieval is on but the library could not be searched
    at: datetime = field(default_factory=utcnow)  # when it was asked, or when the answer was given
    screened: str | None = None  # the request screen's category: a screened question, or the refusal answering it
    left_out: int = 0  # earlier messages the model could not be given (the conversation outgrew its context)


@dataclass
class Conversation:
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    turns: list[Turn] = field(default_factory=list)
    owner: str = ""  # the account whose page holds it (bot.pages.own refuses it to any other)

    def for_model(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in self.turns if t.content]

    def display(self) -> list[dict[str, str]]:
        """Messages for ``gr.Chatbot``: each answer with its urgent-care pointer and footer."""
        shown = []
        for turn in self.turns:
            if turn.role == "user":
                shown.append({"role": "user", "content": literal(turn.content)})
                continue
            parts = [turn.notice] if turn.notice else []
            if not turn.done:
                parts.append(f"{untrusted(turn.content)} ▌")  # still writing
            else:
                content, unlisted = unlisted_citations_removed(turn.content, turn.passages or [])
                parts.append(untrusted(content) or "_(The model gave no answer; press Regenerate.)_")
                if unlisted:
                    parts.append(f"_{unlisted_citations_note(unlisted)}_")
                if turn.interrupted:
                    parts.append(f"**Interrupted:** _{turn.interrupted}_")
                if turn.left_out:
                    parts.append(f"_{left_out_note(turn.left_out)}_")
                if turn.passages is not None:
                    parts.append(sources_markdown(turn.passages, quoted=False))
                elif turn.library_unavailable:
                    parts.append(f"_{SOURCES_UNAVAILABLE}_")
                if turn.screened:
                    parts.append(f"_{SCREENED_NOTE}_")
                if turn.model:
                    parts.append(answer_footer(turn.model, turn.demo))
            shown.append({"role": "assistant", "content": "\n\n".join(parts)})
        return shown


class ChatLimits:
    """Per account: at most ``per_minute`` answers started in any 60 s, and ``concurrent`` being
    written at once (all the account's tabs and scripts together), so one student cannot occupy
    the model server for everyone. In this process's memory (one bot process serves the page), one
    entry per account that chatted: only signed-in accounts get here. A sliding window of start
    times; no installed library offers the concurrency half, and the window is a deque."""

    WINDOW = 60.0

    def __init__(self, per_minute: int, concurrent: int):
        self.per_minute, self.concurrent = per_minute, concurrent
        self._started: dict[str, deque[float]] = {}
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, username: str) -> Iterator[None]:
        """Hold one of ``username``'s answer slots, or raise ``UserError`` saying why not and when to retry."""
        now = time.monotonic()
        with self._lock:
            started = self._started.setdefault(username, deque())
            while started and now - started[0] >= self.WINDOW:
                started.popleft()
            if self._running.get(username, 0) >= self.concurrent:
                log.warning("chat_limited", user=username, reason="concurrent")
                raise UserError("An answer for you is still being written (in this or another tab). Wait for it "
                                "to finish, or press Stop, before asking again.")
            if len(started) >= self.per_minute:
                wait = int(self.WINDOW - (now - started[0])) + 1
                log.warning("chat_limited", user=username, reason="rate")
                raise UserError(f"You have sent {self.per_minute} messages in the last minute, the most one account "
                                f"may send. Please wait {wait} s and send it again (your message is kept).")
            started.append(now)
            self._running[username] = self._running.get(username, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[username] -= 1
                if not self._running[username]:
                    del self._running[username]


class Chat:
    def __init__(self, client: ServingClient, feedback: FeedbackProducer, sessions: sessionmaker[Session],
                 max_chars: int, limits: ChatLimits | None = None, retriever: Retriever | None = None,
                 passage_chars: int = 600, decoding: Decoding = DEFAULT, screen: RequestScreen | None = None):
        self.client = client
        self.screen = screen  # None: CARELOOP_SCREEN_REQUESTS is off, every question goes to the model
        self._screen_error = ""  # why the screen last failed ("": it did not)
        self.decoding = decoding  # the evaluation's too: the gate scores what students read
        self.retriever = retriever  # None: retrieval is off in this deployment
        self.passage_chars = passage_chars
        self.feedback = feedback
        self.sessions = sessions
        self.max_chars = max_chars
        self.limits = limits or ChatLimits(per_minute=20, concurrent=1)
        self._demo: tuple[float, bool] | None = None
        self._library_error = ""  # why the library last failed to be searched ("": it did not)

    def check_message(self, text: str) -> str:
        text = (text or "").strip()
        if not text:
            raise UserError("Type a question first.")
        if len(text) > self.max_chars:
            raise UserError(f"Your message has {len(text):,} characters; the limit is {self.max_chars:,}. "
                            "Please shorten it.")
        return text

    def answer(self, viewer: Viewer, conversation: Conversation, text: str | None = None) -> Iterator[Conversation]:
        """Stream an answer to ``text`` (or, with None, a new answer to the last question),
        yielding the conversation as it grows. Closing the iterator stops the answer (Stop button).
        Refused (``UserError``, nothing added) over the account's ``ChatLimits``."""
        if text is not None:
            text = self.check_message(text)
        elif not conversation.turns or conversation.turns[-1].role != "user":
            raise UserError("There is no question to answer again yet.")
        with self.limits.slot(viewer.username):
            yield from self._answer(viewer, conversation, text)

    def regenerate(self, viewer: Viewer, conversation: Conversation) -> Iterator[Conversation]:
        """Drop the last answer from the conversation and answer its question again (the answer is
        kept if the account's limits refuse)."""
        keep = len(conversation.turns) - (bool(conversation.turns) and conversation.turns[-1].role == "assistant")
        if not keep or conversation.turns[keep - 1].role != "user":
            raise UserError("There is no question to answer again yet.")
        with self.limits.slot(viewer.username):
            del conversation.turns[keep:]
            yield from self._answer(viewer, conversation, None)

    def _answer(self, viewer: Viewer, conversation: Conversation, text: str | None) -> Iterator[Conversation]:
        if text is not None:
            conversation.turns.append(Turn("user", text))
        question = conversation.turns[-1]
        if self.screen is not None and (category := self._screened(conversation, question)) is not None:
            yield from self._refuse(viewer, conversation, question, category)
            return
        reply = Turn("assistant", "", notice=urgent_notice(question.content), done=False)
        started = time.perf_counter()
        reply.passages = self._retrieve(question.content)
        reply.library_unavailable = self.retriever is not None and reply.passages is None
        try:
            first, deltas, reply.left_out = self._started(conversation.for_model(), reply.passages or [])
        except (ServingUnavailable, ServingRejected) as exc:
            if text is not None:
                conversation.turns.pop()
            raise UserError(_serving_message(exc)) from None
        conversation.turns.append(reply)
        finished = False
        try:
            if first is not None:
                reply.content, reply.model = first.text, first.model
            reply.demo = self.is_demo()
            yield conversation
            for delta in deltas:
                reply.content += delta.text
                reply.model = delta.model
                yield conversation
            finished = True
        except (ServingUnavailable, ServingRejected) as exc:
            reply.interrupted = f"the answer stopped early: {_serving_message(exc)}"
        finally:  # also when Stop, or the page going away (closed, reloaded), closes this generator
            if not finished and not reply.interrupted:
                reply.interrupted = CUT_OFF
            reply.done, reply.at = True, utcnow()
            deltas.close()
            self._log(viewer, conversation, question, reply, time.perf_counter() - started)
        yield conversation  # the finished answer, with its footer

    def _started(self, history: list[dict[str, str]],
                 passages: list[Passage]) -> tuple[ChatDelta | None, Iterator[ChatDelta], int]:
        """The answer's first delta, the rest of its stream, and how many of ``history``'s earlier messages
        were left out: the latest turns that leave the answer its full length in the model's context (the
        count of what does not fit comes from serving's refusal, so no tokenizer is needed here). Only the
        question alone is let have a shorter answer; a question too long even for that is refused."""
        params = self.decoding.request_params()
        kept = history
        while True:
            messages = grounded_messages(kept, passages, self.passage_chars)
            deltas = self.client.stream_chat(messages, shorten=len(kept) == 1, **params)
            try:
                return next(deltas, None), deltas, len(history) - len(kept)
            except ContextExceeded as exc:
                deltas.close()
                if len(kept) == 1:
                    raise
                kept = _latest_fitting(kept, messages, exc, params.get("max_tokens") or 0)

    def _screened(self, conversation: Conversation, question: Turn) -> str | None:
        """The request screen's category for ``question`` (None: it goes to the model), logged without its
        text. A screen that fails lets the question through, logged once per outage (as the library)."""
        started = time.perf_counter()
        try:
            decision = self.screen.check(question.content)
        except Exception as exc:  # noqa: BLE001 - a missing model or weights must not stop the chat
            error = f"{type(exc).__name__}: {exc}"[:300]
            if error != self._screen_error:
                log.error("request_screen_failed", error=error)
            self._screen_error = error
            return None
        self._screen_error = ""
        log.info("request_screen", conversation_id=str(conversation.id), message_id=str(question.event_id),
                 screened=decision.category, score=round(decision.score, 3),
                 ms=round((time.perf_counter() - started) * 1000))
        return decision.category

    def _refuse(self, viewer: Viewer, conversation: Conversation, question: Turn,
                category: str) -> Iterator[Conversation]:
        """Answer a screened question with the screen's refusal and redirect (the model is not asked),
        logged as its answer, both turns marked with the category so reviewers see it."""
        question.screened = category
        urgent, crisis = urgent_notice(question.content), screen_notice(category)
        shown = urgent if crisis is None or crisis in (urgent or "") else "\n\n".join(filter(None, [crisis, urgent]))
        reply = Turn("assistant", refusal(category), model=SCREEN_MODEL, notice=shown, screened=category)
        conversation.turns.append(reply)
        self._log(viewer, conversation, question, reply, 0.0)
        yield conversation

    def _retrieve(self, question: str) -> list[Passage] | None:
        """The passages for ``question``; None when retrieval is off or the library cannot be searched
        (the student still gets an answer, without sources, and the log says why)."""
        if self.retriever is None:
            return None
        try:
            passages = self.retriever.search(question)
        except Exception as exc:  # noqa: BLE001 - a broken index or database must not stop the chat
            error = f"{type(exc).__name__}: {exc}"[:300]
            if error != self._library_error:  # once per outage (and cause), not for every question
                log.error("library_search_failed", error=error)
            self._library_error = error
            return None
        if self._library_error:
            log.info("library_search_recovered")
            self._library_error = ""
        return passages

    def rate(self, viewer: Viewer, conversation: Conversation, index: int, thumbs: str, reason: str = "",
             comment: str = "", event_id: uuid.UUID | None = None) -> uuid.UUID:
        """Record a thumbs up/down on the answer at ``index``; ``event_id`` makes a resend harmless."""
        if not 0 <= index < len(conversation.turns) or conversation.turns[index].role != "assistant":
            raise UserError("Choose an answer to rate (the thumbs under an answer).")
        turn = conversation.turns[index]
        if not turn.done:
            raise UserError("This answer is still being written; rate it when it has finished.")
        if not turn.content:
            raise UserError("The model gave no answer here, so there is nothing to rate; press Regenerate to ask "
                            "again.")
        if not turn.logged:
            raise UserError("This answer was not recorded (the server could not write to its disk), so it "
                            "cannot be rated.")
        try:
            return self.feedback.submit_rating(event_id=event_id or uuid.uuid4(), message_id=turn.event_id,
                                               user=viewer.username, thumbs=thumbs, reason=reason or "",
                                               comment=(comment or "").strip())
        except (InvalidFeedback, FeedbackUnavailable) as exc:
            raise UserError(f"The rating was not sent: {exc}") from None

    def conversations(self, viewer: Viewer) -> list[tuple[str, str]]:
        """(label, id) of the viewer's own conversations, the most recent first, each with the time it
        was last asked in: the stored ones and those whose messages are still on their way to the store
        (issue 29, 5: the list showed 1 of 5 until ingest caught up)."""
        listed = {c.id: (c.title, _aware(c.last_at)) for c in history.conversations(self.sessions, viewer.username)}
        for turn in self.feedback.outbox.turns(viewer.username):
            conversation_id, at = uuid.UUID(turn["conversation_id"]), _moment(turn.get("created_at"))
            title, last = listed.get(conversation_id, (None, at))
            if title is None and turn["role"] == "user":
                title = history.title(turn["content"])
            listed[conversation_id] = (title or "…", max(last, at))
        ordered = sorted(listed.items(), key=lambda item: item[1][1], reverse=True)
        return [(f"{title} · {last:%Y-%m-%d %H:%M}", str(conversation_id))
                for conversation_id, (title, last) in ordered]

    def reopen(self, viewer: Viewer, conversation_id: str) -> Conversation:
        try:
            wanted = uuid.UUID(conversation_id)
        except (TypeError, ValueError):
            raise UserError("Choose one of your conversations.") from None
        turns = [Turn(m.role, m.content, m.event_id, m.adapter_version, m.demo_model, logged=True,
                      passages=None if m.passages is None else [Passage(**s) for s in m.passages],
                      interrupted=CUT_OFF_STORED if m.interrupted else "", at=m.created_at, screened=m.screened)
                 for m in history.messages(self.sessions, viewer.username, wanted)]
        stored = {turn.event_id for turn in turns}
        turns += [Turn(t["role"], t["content"], uuid.UUID(t["event_id"]), t.get("adapter_version", ""),
                       t.get("demo_model", False), logged=True,
                       passages=None if t.get("passages") is None else [Passage(**s) for s in t["passages"]],
                       interrupted=CUT_OFF_STORED if t.get("interrupted") else "", at=_moment(t.get("created_at")),
                       screened=t.get("screened"))
                  for t in self.feedback.outbox.turns(viewer.username)
                  if t["conversation_id"] == str(wanted) and uuid.UUID(t["event_id"]) not in stored]
        if not turns:
            raise UserError("That conversation is not among yours.")
        return Conversation(wanted, turns, owner=viewer.username)

    @staticmethod
    def stop(conversation: Conversation) -> Conversation:
        """Stop pressed: the answer being written ends now, marked as cut off and with its footer (issue
        29, 5: it kept a blinking cursor and no label until reopened). Gradio cancels its generator,
        which logs it as it stands a moment later."""
        last = conversation.turns[-1] if conversation.turns else None
        if last is not None and last.role == "assistant" and not last.done:
            last.interrupted = last.interrupted or CUT_OFF
            last.done = True
        return conversation

    def is_demo(self) -> bool:
        now = time.monotonic()
        if self._demo is None or now - self._demo[0] > DEMO_CACHE_SECONDS:
            self._demo = (now, self.client.is_demo())
        return self._demo[1]

    def status(self) -> str:
        """One line on whether serving answers, and which version."""
        if not self.client.health():
            return ("**The model server is unreachable.** Your messages are not lost: keep this page open, "
                    "chat comes back by itself when the server does.")
        try:
            model = self.client.resolve_model()
            demo = self.is_demo()
        except (ServingUnavailable, ServingRejected) as exc:
            return f"**The model server is not ready:** {_serving_message(exc)}"
        return f"Model server up · answering with `{model}`" + (" · **not for clinical use**" if demo else "")

    def _log(self, viewer: Viewer, conversation: Conversation, question: Turn, reply: Turn, seconds: float) -> None:
        if not reply.content:
            return
        try:
            if not question.logged:
                self.feedback.log_turn(event_id=question.event_id, conversation_id=conversation.id,
                                       user=viewer.username, role="user", content=question.content,
                                       created_at=question.at, screened=question.screened)
                question.logged = True
            self.feedback.log_turn(event_id=reply.event_id, conversation_id=conversation.id, user=viewer.username,
                                   role="assistant", content=reply.content, adapter_version=reply.model,
                                   demo_model=reply.demo, interrupted=bool(reply.interrupted),
                                   latency_ms=int(seconds * 1000), created_at=reply.at, screened=reply.screened,
                                   passages=None if reply.passages is None else [asdict(p) for p in reply.passages])
        except FeedbackUnavailable:  # the student keeps the answer; the outbox logged why it was not kept
            return
        reply.logged = True


def _moment(iso: str | None) -> datetime:
    return _aware(datetime.fromisoformat(iso)) if iso else utcnow()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite gives back naive UTC


def _latest_fitting(history: list[dict[str, str]], sent: list[dict[str, str]], refusal: ContextExceeded,
                    answer_tokens: int) -> list[dict[str, str]]:
    """The latest of ``history``'s messages, from a question on, estimated to fit with an answer of
    ``answer_tokens`` (tokens per character as in ``sent``, which ``refusal`` refused); at least one
    message fewer, and always the last (the question being answered)."""
    per_char = refusal.prompt_tokens / max(1, sum(len(m["content"]) for m in sent))
    over = refusal.prompt_tokens + answer_tokens - refusal.context_tokens
    start = 0
    while start < len(history) - 1 and (over > 0 or start == 0 or history[start]["role"] != "user"):
        over -= len(history[start]["content"]) * per_char + MESSAGE_OVERHEAD_TOKENS
        start += 1
    return history[start:]


def left_out_note(count: int) -> str:
    messages = "message" if count == 1 else f"{count} messages"
    return (f"This conversation is longer than the model can read at once: its first {messages} were left out "
            "of what it was given for this answer.")


def _serving_message(exc: Exception) -> str:
    if isinstance(exc, ContextExceeded):
        return f"{exc} Shorten the question to continue."
    if isinstance(exc, ServingRejected):
        return str(exc)
    return "the model server is unreachable right now; try again in a moment (the page retries by itself)."
