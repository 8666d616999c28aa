"""What a search of the library returns (``Passage``) and how a question's words are read, shared by
both search backends (``library.index``'s bm25s index and ``library.postgres``'s store) and by the
citation check (``library.grounding``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import bm25s
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from careloop.settings import Settings

# CARELOOP_RETRIEVAL_MAX_QUERY_TERMS's default: what a search uses unless told otherwise.
MAX_QUERY_TERMS: int = Settings.model_fields["retrieval_max_query_terms"].default


@dataclass(frozen=True)
class Passage:
    """A passage found for a question, numbered as it is cited ([1], [2], ...)."""

    number: int
    doc_id: str
    title: str
    publisher: str
    url: str
    text: str
    score: float


@lru_cache(maxsize=1)
def stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


# What a question says besides its subject: bm25s's English stopwords and the words questions are
# asked with. Left out when judging whether a passage is relevant (``Library.match``), kept for ranking.
STOPWORDS = sorted(set(STOPWORDS_EN) | {
    "what", "how", "why", "when", "where", "who", "whom", "which", "whose", "do", "does", "did", "done", "can",
    "could", "would", "should", "may", "might", "must", "shall", "will", "tell", "know", "explain", "please", "me",
    "my", "i", "you", "your", "am", "is", "are", "was", "were", "be", "been", "it", "its", "get", "much", "many",
    "about", "someone", "something", "anything", "thing", "things", "mean", "means", "hi", "hello", "thanks"})

WORD = re.compile(r"(?u)\b\w\w+\b")  # a word as bm25s's tokenizer splits them (its default pattern)


def tokens(texts: list[str], stopwords: list[str] | None = None) -> list[list[str]]:
    """Lower-cased, stemmed words of each text, without ``stopwords``."""
    return bm25s.tokenize(texts, lower=True, stopwords=stopwords, stemmer=stemmer(), return_ids=False,
                          show_progress=False)


def informative_terms(found: Mapping[str, int], max_terms: int) -> list[str]:
    """The ``max_terms`` most informative of a question's distinct terms (all of them for 0): those the
    fewest passages hold (``found``: each term's count, in the question's order; a term no passage
    holds comes first, as it weighs the most), the question's order among equally rare ones. Each
    term a search uses costs it work over the passages holding it, so a long question is searched
    for its rarest words, as a short one is for all of them: a 4,000-character question took 10 s of
    PostgreSQL's CPU with every word used (issue 31, 6)."""
    if not max_terms or len(found) <= max_terms:
        return list(found)
    return sorted(found, key=found.__getitem__)[:max_terms]
