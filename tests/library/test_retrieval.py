"""Retrieval quality on a fixed set of questions, for each search backend (bm25s, PostgreSQL):
MedQuAD's own question for a page finds that page among the first five, off-topic questions find
nothing relevant, and passages carry what a citation needs."""

from __future__ import annotations

from support import medquad_sample

from careloop.settings import Settings
from library.passages import https_url

DEFAULTS = Settings()
FIXED_QUESTIONS = 200  # drawn with a fixed seed: the same questions every run


def test_the_page_a_question_was_written_from_is_among_the_first_five(searched_library):
    sample = medquad_sample(FIXED_QUESTIONS)
    missed = []
    for record in sample:
        found = searched_library.search(record["question"], 5, DEFAULTS.retrieval_min_score)
        if https_url(record["url"]) not in [passage.url for passage in found]:  # the page: one source per URL
            missed.append(record["question"])
    recall = 1 - len(missed) / len(sample)
    assert recall >= 0.9, f"Recall@5 {recall:.3f}; missed e.g. {missed[:5]}"


def test_passages_are_numbered_with_their_source_and_one_per_page(searched_library):
    found = searched_library.search("What are the symptoms of asthma?", 3, DEFAULTS.retrieval_min_score)
    assert [p.number for p in found] == [1, 2, 3]
    assert len({p.doc_id for p in found}) == 3, "one passage per page"
    assert all("asthma" in p.title.lower() and p.url.startswith("http") and p.publisher and p.text for p in found)
    assert all(DEFAULTS.retrieval_min_score <= p.score <= 1 for p in found)


def test_off_topic_questions_find_nothing_relevant(searched_library):
    for question in ("What is the capital of France?", "How do I bake sourdough bread?",
                     "Who won the football match?", "What is the weather in Paris today?", "hello", "What is it?", ""):
        assert searched_library.search(question, 3, DEFAULTS.retrieval_min_score) == [], question
