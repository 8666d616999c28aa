"""Filling the review queue: real student questions (then seed questions) answered twice.

With retrieval on, both answers are written from the same library passages (the grounded prompt
students get), which the item keeps for reviewers. The two answers come from the live version
and the newest candidate loaded in serving when there is one (so clinicians judge exactly the
change the trainer proposes), otherwise from two samples of the live version. Some items are
gold: a seed preference pair whose better answer is known, used to measure each annotator's
accuracy.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from adapters.registry import Status, open_registry
from careloop.log import get_logger
from careloop.seed import load_seed
from careloop.settings import Settings
from feedback import review_queue
from feedback.store import Message, ReviewItem
from library.grounding import grounded_messages
from library.index import Retriever
from serving.client import ServingClient, ServingRejected

log = get_logger(__name__)


@dataclass(frozen=True)
class FillResult:
    student: int
    seed: int
    gold: int
    skipped: int  # prompts serving refused (e.g. longer than the model's context) or answered with nothing


def fill_review_queue(settings: Settings, sessions: sessionmaker[Session], client: ServingClient,
                      count: int, rng: random.Random | None = None, retriever: Retriever | None = None) -> FillResult:
    rng = rng or random.Random()
    count = min(count, max(settings.review_queue_target - review_queue.unfinished(sessions), 0))
    if count == 0:  # enough items wait for labels: generating more would only burn compute
        return FillResult(0, 0, 0, 0)
    models = _models_to_compare(settings, client)
    gold_target = round(count * settings.review_gold_fraction)
    made = {"student": 0, "seed": 0, "gold": 0, "skipped": 0}
    wanted = count - gold_target
    for message_id, prompt in _prompts(settings, sessions, wanted):
        if made["student"] + made["seed"] >= wanted:
            break
        passages = retriever.search(prompt) if retriever is not None else None
        messages = grounded_messages([{"role": "user", "content": prompt}], passages or [],
                                     settings.retrieval_passage_chars)
        try:
            answers = _answer_pair(settings, client, messages, models, rng)
        except ServingRejected as exc:  # e.g. longer than the model's context: skip this one prompt
            log.warning("review_prompt_skipped", reason=str(exc)[:200])
            made["skipped"] += 1
            continue
        if answers is None:
            log.warning("review_pair_skipped", reason="empty answer", models=list(models))
            made["skipped"] += 1
            continue
        kind = "student" if message_id else "seed"
        if review_queue.add_item(sessions, prompt, answers[0].text, answers[1].text, answers[0].model,
                                 answers[1].model, labels_needed=settings.review_labels_needed, prompt_origin=kind,
                                 student_message_id=message_id,
                                 passages=None if passages is None else [asdict(p) for p in passages]) is not None:
            made[kind] += 1
    pairs = load_seed(settings.seed_data_dir, "preferences")
    for pair in rng.sample(pairs, min(gold_target, len(pairs))):
        chosen_first = rng.random() < 0.5
        a, b = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
        review_queue.add_item(sessions, pair.prompt, a, b, f"seed:{pair.id}", f"seed:{pair.id}",
                              labels_needed=settings.review_labels_needed, prompt_origin="seed",
                              gold_choice="a" if chosen_first else "b")
        made["gold"] += 1
    return FillResult(**made)


def _answer_pair(settings: Settings, client: ServingClient, messages: list[dict[str, str]], models: tuple[str, str],
                 rng: random.Random, attempts: int = 5) -> list | None:
    """One sampled answer from each model. An empty one leaves a nurse nothing to judge (and a
    judgment of it is refused), so it is asked again with another seed; None if it stays empty."""
    answers = []
    for model in models:
        for _ in range(attempts):
            answer = client.chat(messages, model=model,
                                 max_tokens=settings.review_max_tokens, temperature=0.8, seed=rng.randrange(2**31))
            if answer.text.strip():
                answers.append(answer)
                break
        else:
            return None
    return answers


def _models_to_compare(settings: Settings, client: ServingClient) -> tuple[str, str]:
    live = client.resolve_model()
    loaded = set(client.loaded_adapters())
    candidates = [v.name for v in open_registry(settings).versions(Status.CANDIDATE) if v.name in loaded]
    return (live, candidates[-1]) if candidates else (live, live)


def _reviewable(example_id: str) -> bool:
    """Whether a seed question is one a nurse can judge answers to: not PubMedQA's research-abstract
    yes/no/maybe items (issue 29, 8: nurses got abstracts to read), which stay in training and evaluation."""
    return not example_id.startswith("pubmedqa-")


def _prompts(settings: Settings, sessions: sessionmaker[Session], count: int) -> list[tuple[object, str]]:
    """Newest student questions not queued yet, then every seed question not queued yet. A question
    whose text is queued already (asked twice, or a seed question asked verbatim) is not queued
    again: the newest of identical questions stands for them all."""
    with sessions() as session:
        queued = select(ReviewItem.student_message_id).where(ReviewItem.student_message_id.is_not(None))
        newest = func.max(Message.id)
        ids = session.scalars(
            select(newest).where(Message.role == "user", Message.event_id.not_in(queued),
                                 Message.content.not_in(select(ReviewItem.prompt)))
            .group_by(Message.content).order_by(newest.desc()).limit(count)).all()
        student = [(m.event_id, m.content) for m in session.scalars(
            select(Message).where(Message.id.in_(ids)).order_by(Message.id.desc()))]
        queued_text = set(session.scalars(select(ReviewItem.prompt).where(ReviewItem.prompt_origin == "seed")))
    seed = [(None, m.content) for example in load_seed(settings.seed_data_dir, "sft") if _reviewable(example.id)
            for m in example.messages[:1] if m.role == "user" and m.content not in queued_text]
    return student + seed
