"""What a student reads on the real default model (SmolLM2-135M-Instruct), in the browser: answers to
held-out patient questions read as English (issue 30: at serving's old temperature 1.0 they were word
salad). Each answer shown is scored with the degenerate-text measure (``trainer.measures``: the base
model's NLL of the answer, and loops), on questions never used to choose the decoding (K-QA's real
patient questions; the decoding was chosen on MedQuAD and everyday seed questions, bench/decoding.py)."""

from __future__ import annotations

import pytest
from e2e_browser import ask, open_browser, sign_in
from processes import start_bot, start_server, start_worker, stop_server, wait_for
from support import PASSWORD, SEED_DIR

from careloop.seed import load_seed
from careloop.settings import Settings
from trainer.measures import degenerate, repeated_share

# Five of the held-out K-QA questions, none an emergency (an urgent-care pointer would lead the answer).
QUESTIONS = 5


@pytest.fixture(scope="module")
def real_model_bot(tmp_path_factory, smollm2_dir, library_index_dir):
    from careloop import accounts, db
    from careloop.redis_server import free_port, start_local_redis

    home = tmp_path_factory.mktemp("readable")
    url = f"sqlite:///{home / 'careloop.db'}"
    db.upgrade(url)
    accounts.add_user(db.sessions_for(url), "stu.dent", "student", PASSWORD, actor="test")
    redis = start_local_redis(home / "redis")
    server = start_server(home / "serve", smollm2_dir, home / "adapters", database_url=url)
    settings = {"base_model": str(smollm2_dir), "library_index_dir": str(library_index_dir)}
    worker = start_worker(home / "worker", url, redis.url, queues="feedback", **settings)  # stores the answers
    bot = start_bot(home / "bot", free_port(), database_url=url, redis_url=redis.url, serving_url=server.url,
                    **settings)
    yield bot.url, db.sessions_for(url)
    bot.stop()
    worker.stop()
    stop_server(server)
    redis.stop()


def test_answers_on_the_default_model_read_as_english(real_model_bot, smollm2_dir):
    from sqlalchemy import select

    from feedback.store import Message
    from library.grounding import grounded_question
    from library.passages import Passage
    from trainer.evaluate import Models

    url, sessions = real_model_bot
    questions = [r.question for r in load_seed(SEED_DIR, "eval") if r.id.startswith("kqa-")][:QUESTIONS]
    with open_browser() as browser:
        page = sign_in(browser, url, "stu.dent", PASSWORD)
        for question in questions:
            assert "Answered by" in ask(page, question, timeout_ms=180_000)
        page.context.close()

    def answers() -> list:
        with sessions() as session:
            return list(session.scalars(select(Message).where(Message.role == "assistant").order_by(Message.id)))

    wait_for(lambda: len(answers()) == QUESTIONS, timeout=60, message="the five answers stored")
    models = Models.load(str(smollm2_dir), {})
    scored = []
    for question, answer in zip(questions, answers(), strict=True):
        assert answer.content.strip(), f"no answer to {question!r}"
        # The base model's NLL of the answer given what the model was asked: the question with its passages.
        passages = [Passage(**p) for p in answer.passages or []]
        asked = grounded_question(question, passages, Settings().retrieval_passage_chars) if passages else question
        nll = -models.completion_logprobs("base", asked, [answer.content], mean=True)[0]
        scored.append((degenerate(nll, answer.content), round(nll, 2), round(repeated_share(answer.content), 2),
                       answer.content[:200]))
    unreadable = [s for s in scored if s[0]]
    # At most two of five: at temperature 1.0 (96 of 100 held-out answers unreadable) five answers pass
    # this with probability 0.0005; at the default's measured rate (2-8%, BENCHMARKS.md "Decoding") they
    # fail it with probability under 0.01.
    assert len(unreadable) <= 2, f"unreadable answers (degenerate, NLL, repeated share, text): {unreadable}"
