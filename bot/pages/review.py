"""The review tab: a blind pair of answers to one prompt, the choice between them, four axis scores
per answer, a safety flag and an optional corrected answer; keyboard-first (``KEYBOARD``)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gradio as gr

from bot.access import Viewer
from bot.errors import UserError
from bot.pages import Require, own
from bot.rendering import literal, sources_markdown, untrusted
from bot.review import CHOICES, AlreadyJudged, Review, ReviewState
from feedback.review_queue import QueueItem
from feedback.schemas import AXES, SAFETY_CATEGORIES
from library.passages import Passage

SCORE_CHOICES = [1, 2, 3, 4, 5]
DEFAULT_SCORE = 3
# Keyboard shortcuts of the review page: 1-4 choose, Enter submits, S skips. Keys typed into a text
# field stay there (Ctrl/Cmd+Enter submits from one). The app puts it in the page's head.
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


@dataclass
class ReviewPage:
    """What the app needs of the review tab: the tab, and the per-visitor state its load sets."""

    tab: gr.Tab
    state: gr.State


def _words(identifier: str) -> str:
    """A stored identifier as the page shows it: ``harmful_advice`` is "Harmful advice"."""
    return identifier.replace("_", " ").capitalize()


def _passages(stored: list[dict[str, Any]] | None) -> list[Passage] | None:
    """The passages as the review queue stores them (dicts), for ``sources_markdown``."""
    return None if stored is None else [Passage(**passage) for passage in stored]


def _question(item: QueueItem, heading: str = "Question") -> str:
    """The item's question as the page shows it, marked when the request screen screened it (issue 30, 3)."""
    marked = "" if not item.screened else (
        f"**Screened: {_words(item.screened).lower()}.** The request screen judged this student's question "
        "harmful, so the student got its refusal, not these answers. Judge what the model itself said: a refusal "
        "with a useful redirect is the better answer; flag any help with harm.\n\n")
    return f"### {heading}\n\n{marked}{literal(item.prompt)}"


def _fresh(username: str) -> ReviewState:
    return ReviewState(owner=username)


def _own_copy(state: ReviewState | None, viewer: Viewer) -> ReviewState:
    """The tab's state, if it is ``viewer``'s, as a copy the handler changes and returns: a handler that
    fails part-way leaves the tab as it was (issue 31, 2: a failed "Change my last judgment" had already
    marked the previous item as the one on screen, and the next judgment was stored on it)."""
    return copy.deepcopy(own(state, viewer, _fresh))


def build_review(review: Review, require: Require) -> ReviewPage:
    with gr.Tab("Review", id="review", visible=False, elem_id="tab-review") as tab:
        review_state = gr.State()  # set per visitor by the app's load
        figures = gr.Markdown(elem_id="review-figures")
        gr.Markdown("Keys: **1** A better · **2** B better · **3** tie · **4** both bad · **Enter** submit "
                    "(**Ctrl+Enter** from the correction box) · **S** skip. Scores start at 3 (neutral): change the "
                    "ones that differ.",
                    elem_classes="careloop-notice")
        prompt = gr.Markdown(elem_id="review-prompt")
        refresh = gr.Button("Refresh", size="sm", elem_id="review-refresh", visible=False)  # while the queue is empty
        sources = gr.Markdown(elem_id="review-sources")
        score_inputs: list[gr.Radio] = []
        answer_texts: list[gr.Markdown] = []
        with gr.Column(elem_id="review-form") as form:  # hidden while the queue is empty
            with gr.Row(equal_height=False):
                for side, label in (("left", "Answer A"), ("right", "Answer B")):
                    with gr.Column(elem_id=f"review-{side}"):
                        gr.Markdown(f"### {label}")
                        answer_texts.append(gr.Markdown(elem_id=f"review-{side}-text"))
                        for axis in AXES:
                            score_inputs.append(gr.Radio(SCORE_CHOICES, value=DEFAULT_SCORE, label=axis,
                                                         elem_id=f"score-{side}-{axis}"))
            choice = gr.Radio([(f"{key} · {label}", value) for key, (value, label) in enumerate(CHOICES.items(), 1)],
                              label="Which answer is better?", elem_id="review-choice")
            with gr.Row():
                safety_flag = gr.Checkbox(label="Safety problem in either answer", elem_id="review-safety")
                safety_category = gr.Dropdown([(_words(category), category) for category in SAFETY_CATEGORIES],
                                              label="Safety category",
                                              elem_id="review-safety-category")
            corrected = gr.Textbox(label="Corrected answer (optional): what a good answer says", lines=3,
                                   elem_id="review-corrected")
            with gr.Row():
                submit = gr.Button("Submit (Enter)", variant="primary", elem_id="review-submit")
                skip = gr.Button("Skip (S)", elem_id="review-skip")
        # Within AMEND_SECONDS of a submit: the last judgment back on screen as sent, to change it.
        amend = gr.Button("Change my last judgment", size="sm", elem_id="review-amend", visible=False)

    outputs = [figures, prompt, sources, *answer_texts, *score_inputs, choice, safety_flag, safety_category, corrected,
               form, refresh, amend]

    def show(viewer: Viewer, state: ReviewState) -> list[Any]:
        item = review.next(viewer, state)
        blank = [DEFAULT_SCORE] * len(score_inputs) + [None, False, None, ""]
        empty = item is None
        shown = gr.Column(visible=not empty), gr.Button(visible=empty), gr.Button(visible=review.may_amend(state))
        if empty:
            return [review.figures(viewer, state), f"**The queue is empty.** {review.when_items_come()}", "", "", "",
                    *blank, *shown]
        return [review.figures(viewer, state), _question(item.item),
                sources_markdown(_passages(item.item.passages), quoted=True), untrusted(item.left),
                untrusted(item.right), *blank, *shown]

    def open_review(state: ReviewState | None, request: gr.Request) -> list[Any]:
        viewer = require(request, "review")
        state = _own_copy(state, viewer)
        return [state, *show(viewer, state)]

    tab.select(open_review, [review_state], [review_state, *outputs], api_name="review_next", show_progress="hidden")
    refresh.click(open_review, [review_state], [review_state, *outputs], api_name=False, show_progress="hidden")

    judgment_inputs = {review_state, *score_inputs, choice, safety_flag, safety_category, corrected}

    def submit_judgment(values: dict[Any, Any], request: gr.Request) -> list[Any]:
        viewer = require(request, "review")
        state = _own_copy(values[review_state], viewer)
        scores = [values[component] for component in score_inputs]
        half = len(AXES)
        try:
            review.submit(viewer, state, values[choice], dict(zip(AXES, scores[:half], strict=True)),
                          dict(zip(AXES, scores[half:], strict=True)), values[safety_flag],
                          values[safety_category], values[corrected])
        except AlreadyJudged as exc:  # refused: the first judgment stands; move on
            gr.Warning(str(exc))
        except UserError as exc:
            gr.Warning(str(exc))
            return [gr.skip()] * (1 + len(outputs))
        return [state, *show(viewer, state)]

    # "always_last": a press that lands while the previous submit is finishing runs after it;
    # Gradio's default ("once") silently drops it, and a fast reviewer's judgment with it.
    submit.click(submit_judgment, judgment_inputs, [review_state, *outputs], api_name="review_submit",
                 show_progress="hidden", trigger_mode="always_last")

    def pass_item(state: ReviewState | None, request: gr.Request) -> list[Any]:
        viewer = require(request, "review")
        state = _own_copy(state, viewer)
        review.skip(viewer, state)
        return [state, *show(viewer, state)]

    skip.click(pass_item, [review_state], [review_state, *outputs], api_name="review_skip",
               show_progress="hidden", trigger_mode="always_last")

    def amend_last(state: ReviewState | None, request: gr.Request) -> list[Any]:
        viewer = require(request, "review")
        state = _own_copy(state, viewer)
        try:
            sent = review.amend(viewer, state)
        except UserError as exc:
            gr.Warning(str(exc))
            return [state, *[gr.skip()] * (len(outputs) - 1), gr.Button(visible=False)]
        item = sent.shown.item
        scores = [sent.left_scores[axis] for axis in AXES] + [sent.right_scores[axis] for axis in AXES]
        return [state, review.figures(viewer, state),
                _question(item, "Question (changing your last judgment: Submit replaces it, Skip keeps it)"),
                sources_markdown(_passages(item.passages), quoted=True),
                untrusted(sent.shown.left), untrusted(sent.shown.right),
                *scores, sent.choice, sent.safety_flag, sent.safety_category, sent.corrected,
                gr.Column(visible=True), gr.Button(visible=False), gr.Button(visible=False)]

    amend.click(amend_last, [review_state], [review_state, *outputs], api_name="review_amend", show_progress="hidden")
    return ReviewPage(tab, review_state)
