"""Filling the review queue: real student questions (then seed questions) answered twice.

With retrieval on, both answers are written from the same library passages (the grounded prompt
students get), which the item keeps for reviewers. The two answers come from the live version
and the newest candidate loaded in serving when there is one (so clinicians judge exactly the
change the trainer proposes), otherwise from two samples of the live version. Some items are
gold: a seed preference pair whose better answer is known, used to measure each annotator's
accuracy. ``CARELOOP_REVIEW_FILL_CONCURRENCY`` questions are answered at once (the engine batches them),
each request marked as background work so students' questions are admitted first.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from adapters.registry import Status, open_registry
from careloop.decoding import Decoding, decoding_for
from careloop.log import get_logger
from careloop.seed import load_seed
from careloop.settings import Settings
from feedback import review_queue
from feedback.store import Message, ReviewItem
from library.grounding import grounded_messages
from library.index import Retriever
from serving.client import ServingClient, ServingRejected

log = get_logger(__name__)
# A fill gives up after this many prompts per item it wanted whose answers came out empty or identical (a
# refusal for length costs no generation and does not count): a model that cannot give two different
# answers must not burn through every seed question.
MAX_SKIPPED_PER_ITEM = 3


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
    decoding = decoding_for(settings)  # the chat's: nurses judge what students read
    gold_target = round(count * settings.review_gold_fraction)
    made = {"student": 0, "seed": 0, "gold": 0, "skipped": 0}
    wanted = count - gold_target
    if models[0] == models[1] and decoding.temperature == 0:
        # One version decoded greedily answers the same twice: every pair would be skipped, after asking
        # serving for two answers to each of thousands of seed questions.
        log.warning("review_fill_needs_two_answers", models=list(models),
                    reason="greedy decoding (CARELOOP_DECODING_TEMPERATURE=0) and no candidate loaded: "
                    "every pair would be two identical answers")
        wanted = 0
    prompts = iter(_prompts(settings, sessions, wanted) if wanted else ())
    fruitless = 0  # prompts answered, at the cost of generating, with nothing to judge
    with ThreadPoolExecutor(settings.review_fill_concurrency, thread_name_prefix="review-fill") as pool:
        # In waves of as many prompts as items are still wanted, answered side by side (the engine batches
        # them); a wave's skipped prompts are made up by the next, up to MAX_SKIPPED_PER_ITEM per item.
        while ((missing := wanted - made["student"] - made["seed"]) > 0
               and fruitless < MAX_SKIPPED_PER_ITEM * wanted and (wave := list(islice(prompts, missing)))):
            grounded = [(prompt, retriever.search(prompt[1]) if retriever is not None else None) for prompt in wave]
            jobs = [(grounded_messages([{"role": "user", "content": prompt}], passages or [],
                                       settings.retrieval_passage_chars), random.Random(rng.randrange(2**31)))
                    for (_, prompt, _), passages in grounded]
            pairs = pool.map(lambda job: _answer_pair(decoding, client, job[0], models, job[1]), jobs)
            for ((message_id, prompt, screened), passages), answers in zip(grounded, pairs, strict=True):
                if isinstance(answers, ServingRejected):  # e.g. longer than the model's context
                    log.warning("review_prompt_skipped", reason=str(answers)[:200])
                    made["skipped"] += 1
                    continue
                if answers is None:
                    log.warning("review_pair_skipped", reason="empty or identical answers", models=list(models))
                    made["skipped"] += 1
                    fruitless += 1
                    continue
                kind = "student" if message_id else "seed"
                if review_queue.add_item(sessions, prompt, answers[0].text, answers[1].text, answers[0].model,
                                         answers[1].model, labels_needed=settings.review_labels_needed,
                                         prompt_origin=kind, student_message_id=message_id, screened=screened,
                                         passages=None if passages is None else [asdict(p) for p in passages],
                                         ) is not None:
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


def _answer_pair(decoding: Decoding, client: ServingClient, messages: list[dict[str, str]], models: tuple[str, str],
                 rng: random.Random, attempts: int = 5) -> list | ServingRejected | None:
    """One answer from each model, decoded as the chat decodes, behind students' questions in serving's
    queue. An empty one leaves a nurse nothing to judge (and a judgment of it is refused), so it is asked
    again with another seed; None if it stays empty, or if both answers are the same text; serving's
    refusal (returned, so one prompt's does not end the others' wave)."""
    answers = []
    try:
        for model in models:
            for _ in range(attempts):
                answer = client.chat(messages, model=model,
                                     **client.in_background(decoding.request_params(seed=rng.randrange(2**31))))
                if answer.text.strip():
                    answers.append(answer)
                    break
            else:
                return None
    except ServingRejected as exc:
        return exc
    if answers[0].text.strip() == answers[1].text.strip():
        return None  # one model decoded greedily twice: nothing for a nurse to choose between
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


def _prompts(settings: Settings, sessions: sessionmaker[Session],
             count: int) -> list[tuple[object, str, str | None]]:
    """Newest student questions not queued yet, then every seed question not queued yet. A question
    whose text is queued already (asked twice, or a seed question asked verbatim) is not queued
    again: the newest of identical questions stands for them all. Each with the request screen's
    category when it screened the question: it is queued like any other, marked, so clinicians judge
    what the model itself would have said (and their judgments teach it to refuse)."""
    with sessions() as session:
        queued = select(ReviewItem.student_message_id).where(ReviewItem.student_message_id.is_not(None))
        newest = func.max(Message.id)
        ids = session.scalars(
            select(newest).where(Message.role == "user", Message.event_id.not_in(queued),
                                 Message.content.not_in(select(ReviewItem.prompt)))
            .group_by(Message.content).order_by(newest.desc()).limit(count)).all()
        student = [(m.event_id, m.content, m.screened) for m in session.scalars(
            select(Message).where(Message.id.in_(ids)).order_by(Message.id.desc()))]
        queued_text = set(session.scalars(select(ReviewItem.prompt).where(ReviewItem.prompt_origin == "seed")))
    seed = [(None, m.content, None) for example in load_seed(settings.seed_data_dir, "sft") if _reviewable(example.id)
            for m in example.messages[:1] if m.role == "user" and m.content not in queued_text]
    return student + seed
