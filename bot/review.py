"""The review page's logic, apart from Gradio: the next blind pair, a judgment, skip, and the
reviewer's own figures.

Which answer shows on the left is random per item and recorded (``shown_order``); the reviewer
chooses left or right and the judgment is stored in terms of the item's own A and B. Judgments go
through ``feedback.producer`` (outbox first): nothing a clinician submits is lost, and a resend of the
same judgment (a double click) is stored once.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from bot.access import Viewer
from bot.errors import UserError
from careloop.db import utcnow
from careloop.log import get_logger
from feedback import review_queue
from feedback.producer import AlreadySubmitted, FeedbackProducer, FeedbackUnavailable, InvalidFeedback
from feedback.quality import annotator_quality
from feedback.schemas import AXES, SAFETY_CATEGORIES
from feedback.schemas import CHOICES as STORED_CHOICES

# What the page offers, with its labels: a side of the screen (left shows "Answer A"), or a stored
# choice that names no side. ``submit`` stores a side as the item's own a or b.
CHOICES = {"left": "A is better", "right": "B is better",
           **{choice: choice.replace("_", " ") for choice in STORED_CHOICES if choice not in ("a", "b")}}

log = get_logger(__name__)

ALREADY_JUDGED = ("You have already judged this item (in another tab or window). Your first judgment stands; "
                  "this one was not recorded. Here is your next item.")


class AlreadyJudged(UserError):
    """A second judgment of the same item by the same reviewer: refused, the first one stands."""


@dataclass
class Shown:
    """One item as this reviewer sees it."""

    item: review_queue.QueueItem
    order: str  # "ab": the item's A on the left; "ba": B on the left
    shown_at: float = field(default_factory=time.monotonic)

    @property
    def event_id(self) -> uuid.UUID:
        """The assignment's: every tab showing this item to this reviewer sends the same id."""
        return self.item.event_id

    @property
    def left(self) -> str:
        return self.item.response_a if self.order == "ab" else self.item.response_b

    @property
    def right(self) -> str:
        return self.item.response_b if self.order == "ab" else self.item.response_a


@dataclass(frozen=True)
class Sent:
    """A judgment this tab sent: what it said, for "Change my last judgment"."""

    shown: Shown
    event_id: uuid.UUID
    choice: str
    left_scores: dict[str, int | None]
    right_scores: dict[str, int | None]
    safety_flag: bool
    safety_category: str | None
    corrected: str
    at: float = field(default_factory=time.monotonic)


@dataclass
class ReviewState:
    """What one browser tab remembers between clicks."""

    shown: Shown | None = None
    submitted: list[int] = field(default_factory=list)  # sent, perhaps not stored yet
    owner: str = ""  # the account whose page holds it (bot.pages.own refuses it to any other)
    last: Sent | None = None  # the last judgment sent, which may still be changed
    amending: Sent | None = None  # set while that judgment is on screen again to be changed


@dataclass(frozen=True)
class Filling:
    """How the queue is filled, for the page to say when new items come: beat's interval, the delay
    after a student's question, and the Redis where the worker notes its fills."""

    redis_url: str
    interval: float
    soon: float


AMEND_SECONDS = 120  # how long after sending a judgment it may be changed

TOO_LATE = ("Only your last judgment can be changed, within 2 minutes of sending it. (What is stored stands; "
            "tell your administrator if it was wrong.)")


class Review:
    def __init__(self, feedback: FeedbackProducer, sessions: sessionmaker[Session], filling: Filling,
                 rng: random.Random | None = None):
        self.feedback = feedback
        self.sessions = sessions
        self.filling = filling
        self.rng = rng or random.Random()

    def when_items_come(self) -> str:
        """What the page says while the queue is empty: when new items arrive."""
        filling = self.filling
        fills = review_queue.fills(filling.redis_url, filling.interval)
        every = _duration(filling.interval)
        told = [f"New items are added every {every}"]
        if fills.next_scheduled is not None:
            told.append(f" (the next fill is due about {fills.next_scheduled:%H:%M} UTC")
            told.append(f"; the last ran at {fills.last:%H:%M:%S} UTC)" if fills.last else ")")
        if filling.soon > 0:
            told.append(f" and about {_duration(filling.soon)} after a student asks a question")
        if fills.soon:
            told.append(" (one is on its way now)")
        told.append(". Filling takes a little longer while the model writes the answers. "
                    "Press **Refresh** to look again.")
        return "".join(told)

    def next(self, viewer: Viewer, state: ReviewState) -> Shown | None:
        """The item to judge now: never one this reviewer judged, stored or still on its way from any of
        her tabs (issue 29, 4: after a reload, an item judged a moment ago showed again, sides swapped)."""
        item = review_queue.next_item(self.sessions, viewer.username, exclude=self._sent(viewer, state))
        state.shown = Shown(item, self.rng.choice(("ab", "ba"))) if item else None
        return state.shown

    def submit(self, viewer: Viewer, state: ReviewState, choice: str | None, left_scores: dict[str, int | None],
               right_scores: dict[str, int | None], safety_flag: bool = False, safety_category: str | None = None,
               corrected: str = "") -> uuid.UUID:
        shown = state.shown
        if shown is None:
            raise UserError("There is no item to judge; the queue may be empty.")
        if choice not in CHOICES:
            raise UserError("Choose which answer is better (1 A, 2 B, 3 tie, 4 both bad) before submitting.")
        missing = [f"{side} {axis}" for side, scores in (("A", left_scores), ("B", right_scores))
                   for axis in AXES if scores.get(axis) is None]
        if missing:
            raise UserError("Score every axis from 1 to 5; missing: " + ", ".join(missing) + ".")
        wrong = [f"{side} {axis} is {scores[axis]!r}" for side, scores in (("A", left_scores), ("B", right_scores))
                 for axis in AXES if scores[axis] not in range(1, 6)]
        if wrong:
            raise UserError("Scores go from 1 to 5: " + ", ".join(wrong) + ".")
        if safety_flag and not safety_category:
            raise UserError("You flagged a safety problem: choose its category.")
        if safety_category and safety_category not in SAFETY_CATEGORIES:
            raise UserError(f"Unknown safety category {safety_category!r}.")
        flipped = shown.order == "ba"
        as_item = {"left": "b" if flipped else "a", "right": "a" if flipped else "b"}.get(choice, choice)
        scores_a, scores_b = (right_scores, left_scores) if flipped else (left_scores, right_scores)
        item = shown.item
        amending = state.amending
        if amending is not None and time.monotonic() - amending.at > AMEND_SECONDS:
            state.amending, state.shown = None, None
            raise UserError(TOO_LATE)
        if amending is None and review_queue.judged(self.sessions, item.id, viewer.username):
            self._refuse_second(viewer, state, item)
        # A change is a new event naming the one it replaces; the store keeps one judgment per item.
        event_id, amends = (uuid.uuid4(), amending.event_id) if amending else (shown.event_id, None)
        try:
            event_id = self.feedback.submit_comparison(
                event_id=event_id, amends=amends, review_item_id=item.id, annotator=viewer.username, prompt=item.prompt,
                response_a=item.response_a, response_b=item.response_b, version_a=item.version_a,
                version_b=item.version_b, shown_order=shown.order, choice=as_item, scores_a=scores_a,
                scores_b=scores_b, safety_flag=bool(safety_flag), safety_category=safety_category or None,
                corrected_answer=(corrected or "").strip() or None, created_at=utcnow(),
                seconds_spent=round(min(time.monotonic() - shown.shown_at, 86_400), 1))
        except AlreadySubmitted:  # another tab sent this item's judgment; it is on its way
            self._refuse_second(viewer, state, item)
        except (InvalidFeedback, FeedbackUnavailable) as exc:
            raise UserError(f"The judgment was not sent: {exc}") from None
        log.info("judgment_sent", user=viewer.username, item=item.id, event_id=str(event_id),
                 amends=str(amends) if amends else None)
        if amending is None:
            state.submitted.append(item.id)
        state.last = Sent(shown, event_id, choice, dict(left_scores), dict(right_scores), bool(safety_flag),
                          safety_category or None, corrected or "", at=amending.at if amending else time.monotonic())
        state.shown, state.amending = None, None
        return event_id

    def may_amend(self, state: ReviewState) -> bool:
        """Whether the last judgment this tab sent may still be changed."""
        return state.last is not None and state.amending is None and time.monotonic() - state.last.at <= AMEND_SECONDS

    def amend(self, viewer: Viewer, state: ReviewState) -> Sent:
        """Show the last judgment again, as it was sent, to be changed: submitting it replaces the
        stored one (one judgment per item stays); Skip leaves it as it is. Within ``AMEND_SECONDS``
        of sending it (counted from the first send: changes do not extend it)."""
        if state.last is None or not self.may_amend(state):
            raise UserError(TOO_LATE if state.last else "You have not sent a judgment from this tab yet.")
        state.amending = state.last
        state.shown = Shown(state.last.shown.item, state.last.shown.order)
        log.info("judgment_amending", user=viewer.username, item=state.shown.item.id)
        return state.last

    def _sent(self, viewer: Viewer, state: ReviewState) -> set[int]:
        """Items judged from this tab, and from any tab whose judgments the outbox still holds."""
        return {*state.submitted, *self.feedback.outbox.judged_items(viewer.username)}

    def _refuse_second(self, viewer: Viewer, state: ReviewState, item: review_queue.QueueItem) -> None:
        log.warning("second_judgment_refused", user=viewer.username, item=item.id)
        state.submitted.append(item.id)
        state.shown = None
        raise AlreadyJudged(ALREADY_JUDGED)

    def skip(self, viewer: Viewer, state: ReviewState) -> None:
        if state.amending is not None:  # leave the last judgment as it was sent
            state.amending, state.shown = None, None
            return
        if state.shown is not None:
            review_queue.skip(self.sessions, state.shown.item.id, viewer.username)
            state.shown = None

    def figures(self, viewer: Viewer, state: ReviewState) -> str:
        """Progress and the reviewer's own agreement and gold score, as one Markdown line, each number
        saying what it counts: judgments sent from this tab reach the store a moment later (through
        the outbox and the worker), so the line says how many are stored and how many on their way."""
        shown = [state.shown.item.id] if state.shown else []
        progress = review_queue.progress(self.sessions, viewer.username, exclude=[*shown, *self._sent(viewer, state)])
        sent = len(state.submitted)
        stored = review_queue.judged_count(self.sessions, viewer.username, state.submitted) if sent else 0
        stats = annotator_quality(self.sessions).by_annotator().get(viewer.username)
        on_the_way = f", {sent - stored} on the way" if sent > stored else ""
        parts = [f"**{sent}** judged in this tab ({stored} stored{on_the_way})",
                 f"{progress.labelled} of your judgments stored in all", f"{progress.skipped} skipped",
                 f"{progress.available} more items waiting for you" + (" after this one" if shown else "")]
        agreement = stats.agreement if stats else None
        gold = stats.gold_accuracy if stats else None
        parts.append(f"agreement with colleagues {agreement:.0%}" if agreement is not None
                     else "agreement: not enough shared items yet")
        parts.append(f"gold score {gold:.0%} ({stats.gold_labels} items)" if gold is not None
                     else "gold score: no gold items yet")
        return " · ".join(parts)

def _duration(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"
