"""The library's passages in PostgreSQL, searched with its full-text search: one store that every
bot, worker and trainer on the database queries, instead of a bm25s index in each process.

Table ``library_passages`` (migration 0011, PostgreSQL only): each passage with its page's title and
heading, and a generated ``tsvector`` of them under a GIN index. Text search configuration
``careloop_english``: PostgreSQL's English one (its parser, the Snowball English stemmer, as the bm25s
index's PyStemmer) without its stopword list, as the bm25s index keeps the question words; title and
heading weigh A, the text D. The shipped library is loaded once per content (``store_key``,
recorded in ``library_loads``) by the first process that needs it, under an advisory lock; an
admin's document's passages are written in the document's own transaction (``add_passages``) and
deleted with it (foreign key, cascade).

``search`` computes the relevance share of ``library.index``'s ``Library.match`` with the store's
own lexemes: each of the question's content words weighted by its IDF (bm25s's formula; passage
counts from ``library_terms``, counted at load and kept by triggers as admins' documents come and
go, migration 0014). Of a long question it uses the rarest lexemes only
(CARELOOP_RETRIEVAL_MAX_QUERY_TERMS, ``informative_terms``): what a search costs grows with the
lexemes it uses. Only passages holding one of the rarest words can reach the threshold
(``_viable``): those are ranked by each question word's ``ts_rank`` times its IDF, and the best that
reach it returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import Row, text
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import transaction
from careloop.log import get_logger
from library.corpus import CHUNK_CHARS, Chunk, shipped_digest
from library.passages import MAX_QUERY_TERMS, STOPWORDS, WORD, Passage, informative_terms

log = get_logger(__name__)

STORE_VERSION = 1  # bump when what is stored of a passage changes: the store is loaded again
LOAD_LOCK = 0x6C6962  # the advisory lock loads take exclusively and documents' writes shared ("lib")
_STOPWORDS = frozenset(STOPWORDS)

# Each lexeme of the question, in the question's order, whether it is a content word's, and the
# number of passages that hold it, with the number of passages: counted ahead (migration 0014: at
# load, and by triggers as admins' documents come and go), read by primary key.
_TERMS = text("""
WITH question AS MATERIALIZED (
    SELECT to_tsvector('careloop_english', :words) AS words,
           tsvector_to_array(to_tsvector('careloop_english', :content)) AS content)
SELECT word.lexeme, word.lexeme = ANY(question.content) AS content, coalesce(terms.passages, 0) AS found,
       (SELECT coalesce(max(all_passages), 0) FROM library_loads) AS total
FROM question CROSS JOIN unnest(question.words) AS word
LEFT JOIN library_terms AS terms ON terms.lexeme = word.lexeme
ORDER BY word.positions[1], word.lexeme
""")

# The passages that can reach the threshold (they hold one of the ``viable`` lexemes), best first:
# the sum over the question's lexemes used of each one's ts_rank (its occurrences, title and heading
# weighing most) times its IDF, as BM25 weighs a rare word above a common one. The lexemes of the
# best only are listed (for their relevance share): for every match, that was a third of the time.
_CANDIDATES = text("""
SELECT best.doc_id, best.title, best.publisher, best.url, best.text, tsvector_to_array(best.search) AS lexemes
FROM (SELECT p.id, p.doc_id, p.title, p.publisher, p.url, p.text, p.search,
             (SELECT sum(word.idf * ts_rank(p.search, word.query))
              FROM unnest(CAST(:queries AS tsquery[]), CAST(:idfs AS float8[])) AS word(query, idf)) AS rank
      FROM library_passages AS p
      WHERE p.search @@ CAST(:viable AS tsquery)
      ORDER BY rank DESC, p.id
      LIMIT :depth) AS best
ORDER BY best.rank DESC, best.id
""")


def store_key(data_dir: Path) -> str:
    """Names what is loaded: the shipped data and how it is cut into passages (not the admins'
    documents: they are written with each change)."""
    return f"{STORE_VERSION}-{CHUNK_CHARS}-{shipped_digest(data_dir)[:16]}"


class Store:
    """The passages in PostgreSQL; ``search`` has ``library.index.Library.search``'s contract."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def __len__(self) -> int:
        with self.sessions() as session:
            return session.scalar(text("SELECT count(*) FROM library_passages"))

    def search(self, question: str, k: int, min_score: float = 0.0,
               max_terms: int = MAX_QUERY_TERMS) -> list[Passage]:
        """The best passage of each of the ``k`` best-ranked documents whose share of the question's
        content words is at least ``min_score``, best first, numbered from 1; empty when none is. Of
        the question's lexemes, the ``max_terms`` rarest are used (``query_terms``)."""
        words = WORD.findall(question.lower())
        if not words:
            return []
        with self.sessions() as session:
            used = self._query_terms(session, words, max_terms)
            idf = {term.lexeme: math.log(1 + (term.total - term.found + 0.5) / (term.found + 0.5)) for term in used}
            weights = {term.lexeme: idf[term.lexeme] for term in used if term.content}  # what relevance counts
            if weights:
                needed = _viable(weights, min_score)
            else:  # no content word: no passage holds any of it; without a threshold, any word will do
                needed = [] if min_score > 0 else list(idf)
            if not needed:
                return []
            rows = session.execute(_CANDIDATES, {"viable": " | ".join(map(_quoted, needed)),
                                                 "queries": list(map(_quoted, idf)), "idfs": list(idf.values()),
                                                 "depth": 8 * k}).all()  # a document's other passages may come first
        whole = sum(weights.values())
        passages: list[Passage] = []
        seen: set[str] = set()
        for row in rows:
            if len(passages) == k:
                break
            held = set(row.lexemes)
            share = sum(weight for lexeme, weight in weights.items() if lexeme in held) / whole if whole else 0.0
            if row.doc_id in seen or share < min_score:
                continue
            seen.add(row.doc_id)
            passages.append(Passage(len(passages) + 1, row.doc_id, row.title, row.publisher, row.url, row.text,
                                    round(share, 3)))
        return passages

    def query_terms(self, question: str, max_terms: int = MAX_QUERY_TERMS) -> list[str]:
        """The lexemes of the question a search uses: its ``max_terms`` rarest distinct ones
        (``informative_terms``, by the number of passages holding each)."""
        words = WORD.findall(question.lower())
        if not words:
            return []
        with self.sessions() as session:
            return [term.lexeme for term in self._query_terms(session, words, max_terms)]

    @staticmethod
    def _query_terms(session: Session, words: list[str], max_terms: int) -> list[Row]:
        counted = {row.lexeme: row for row in session.execute(_TERMS, {"words": " ".join(words), "content": " ".join(
            word for word in words if word not in _STOPWORDS)})}
        return [counted[lexeme] for lexeme in informative_terms(
            {lexeme: row.found for lexeme, row in counted.items()}, max_terms)]


def _quoted(lexeme: str) -> str:
    """``lexeme`` as a tsquery of itself (not parsed or stemmed again)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _viable(weights: dict[str, float], min_score: float) -> list[str]:
    """The rarest of the question's words such that a passage holding none of them lacks more than
    ``1 - min_score`` of the question's weight: only passages holding one can reach ``min_score``."""
    whole = sum(weights.values())
    needed: list[str] = []
    held = 0.0
    for lexeme, weight in sorted(weights.items(), key=lambda item: -item[1]):
        if held > (1 - min_score) * whole:
            break
        needed.append(lexeme)
        held += weight
    return needed


def _lock(session: Session, shared: bool) -> None:
    session.execute(text(f"SELECT pg_advisory_xact_lock{'_shared' if shared else ''}(:lock)"), {"lock": LOAD_LOCK})


def _copy(session: Session, passages: Iterable[tuple[int | None, Chunk]]) -> int:
    """Write passages (with the id of the admin's document each is from, None for the shipped
    library) in the session's transaction, with COPY."""
    count = 0
    with session.connection().connection.driver_connection.cursor() as cursor, cursor.copy(
            "COPY library_passages (doc_id, document_id, title, heading, publisher, url, text) FROM STDIN") as copy:
        for document_id, chunk in passages:
            copy.write_row((chunk.doc_id, document_id, chunk.title, chunk.heading, chunk.publisher, chunk.url,
                            chunk.text))
            count += 1
    return count


def add_passages(session: Session, document_id: int, chunks: list[Chunk]) -> None:
    """Store an admin's document's passages in its own transaction (a load waits for it, and it for
    a load, so the load's copy of the documents is never doubled)."""
    _lock(session, shared=True)
    _copy(session, ((document_id, chunk) for chunk in chunks))


def ensure_loaded(sessions: sessionmaker[Session], key: str,
                  passages: Callable[[Session], Iterable[tuple[int | None, Chunk]]]) -> bool:
    """Load the library named ``key`` unless it is loaded: every passage replaced by ``passages``
    (the shipped ones and every admin document's, read in the loading transaction) in one
    transaction, so searches see the old library until the new one is whole. Processes starting
    together load it once: the others wait for the lock and find it loaded. True if this call loaded it."""
    loaded = text("SELECT 1 FROM library_loads WHERE key = :key")
    with sessions() as session:
        if session.scalar(loaded, {"key": key}):
            return False
    with transaction(sessions) as session:
        _lock(session, shared=False)
        if session.scalar(loaded, {"key": key}):
            return False
        started = time.perf_counter()
        # The load counts every passage's lexemes once, below: the triggers that count a document's
        # as it is added or removed (migration 0014) leave this transaction's writes alone.
        session.execute(text("SET LOCAL careloop.library_load = 'on'"))
        for table in ("library_passages", "library_terms", "library_loads"):
            session.execute(text(f"DELETE FROM {table}"))
        count = _copy(session, passages(session))
        session.execute(text("""
            INSERT INTO library_terms (lexeme, passages)
            SELECT word.lexeme, count(*) FROM library_passages AS p, unnest(p.search) AS word GROUP BY word.lexeme"""))
        # New rows wait in the GIN index's pending list, which every search reads through: merge it now.
        session.execute(text("SELECT gin_clean_pending_list('ix_library_passages_search')"))
        session.execute(text("ANALYZE library_passages, library_terms"))
        seconds = time.perf_counter() - started
        session.execute(text("""
            INSERT INTO library_loads (key, passages, all_passages, seconds)
            SELECT :key, count(*) FILTER (WHERE document_id IS NULL), count(*), :seconds FROM library_passages"""),
                        {"key": key, "seconds": seconds})
    log.info("library_store_loaded", passages=count, seconds=round(seconds, 1))
    return True
