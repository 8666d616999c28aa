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
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import Row, text
from sqlalchemy.orm import Session, sessionmaker

from careloop.db import transaction
from careloop.log import get_logger
from library import embedding
from library.corpus import CHUNK_CHARS, Chunk, shipped_digest
from library.passages import (
    MAX_QUERY_TERMS,
    STOPWORDS,
    WORD,
    Candidate,
    Passage,
    embedded,
    embedded_text,
    fuse,
    informative_terms,
    shipped_vectors,
)

log = get_logger(__name__)

STORE_VERSION = 2  # bump when what is stored of a passage changes: the store is loaded again
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
SELECT best.id, best.doc_id, best.title, best.publisher, best.url, best.text,
       tsvector_to_array(best.search) AS lexemes
FROM (SELECT p.id, p.doc_id, p.title, p.publisher, p.url, p.text, p.search,
             (SELECT sum(word.idf * ts_rank(p.search, word.query))
              FROM unnest(CAST(:queries AS tsquery[]), CAST(:idfs AS float8[])) AS word(query, idf)) AS rank
      FROM library_passages AS p
      WHERE p.search @@ CAST(:viable AS tsquery)
      ORDER BY rank DESC, p.id
      LIMIT :depth) AS best
ORDER BY best.rank DESC, best.id
""")


# The passages the embeddings' ranking found, with what the relevance share needs.
_ROWS = text("""
SELECT p.id, p.doc_id, p.title, p.publisher, p.url, p.text, tsvector_to_array(p.search) AS lexemes
FROM library_passages AS p WHERE p.id = ANY(CAST(:ids AS bigint[]))
""")


def store_key(data_dir: Path, dense: bool = False) -> str:
    """Names what is loaded: the shipped data, how it is cut into passages and whether with their
    embeddings (not the admins' documents: they are written with each change)."""
    return f"{STORE_VERSION}-{CHUNK_CHARS}-{shipped_digest(data_dir)[:16]}" + ("-dense" if dense else "")


class Store:
    """The passages in PostgreSQL; ``search`` has ``library.index.Library.search``'s contract."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self._vectors: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None  # (version, ids, matrix)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self.sessions() as session:
            return session.scalar(text("SELECT count(*) FROM library_passages"))

    def search(self, question: str, k: int, min_score: float = 0.0, max_terms: int = MAX_QUERY_TERMS,
               min_similarity: float | None = None) -> list[Passage]:
        """The best passage of each of the ``k`` best-ranked pages (one per URL) that are relevant,
        best first, numbered from 1; empty when none is. BM25 alone (``min_similarity`` None, or no
        embeddings stored): relevant is a share of the question's content words of at least
        ``min_score``; hybrid, that or a cosine similarity of at least ``min_similarity``. Of the
        question's lexemes, the ``max_terms`` rarest are used (``query_terms``)."""
        words = WORD.findall(question.lower())
        if not words:
            return []
        depth = 8 * k  # a page's other passages may come first
        with self.sessions() as session:
            dense = self._dense(session, question, depth) if min_similarity is not None else None
            used = self._query_terms(session, words, max_terms)
            idf = {term.lexeme: math.log(1 + (term.total - term.found + 0.5) / (term.found + 0.5)) for term in used}
            weights = {term.lexeme: idf[term.lexeme] for term in used if term.content}  # what relevance counts
            if weights:
                needed = _viable(weights, min_score)
            else:  # no content word: no passage holds any of it; without a threshold, any word will do
                needed = [] if min_score > 0 else list(idf)
            rows = session.execute(_CANDIDATES, {"viable": " | ".join(map(_quoted, needed)),
                                                 "queries": list(map(_quoted, idf)), "idfs": list(idf.values()),
                                                 "depth": depth}).all() if needed else []
            lexical_rank = {row.id: rank for rank, row in enumerate(rows)}
            similarity: dict[int, float] = {}
            if dense is not None:
                ids, similarities = dense
                similarity = dict(zip(ids.tolist(), similarities.tolist(), strict=True))
                lexical_ids = {row.id for row in rows}
                rows = rows + session.execute(_ROWS, {"ids": [i for i in similarity if i not in lexical_ids]}).all()
        whole = sum(weights.values())
        dense_rank = {i: rank for rank, i in enumerate(similarity)}
        candidates = []
        for row in rows:
            held = set(row.lexemes)
            share = sum(weight for lexeme, weight in weights.items() if lexeme in held) / whole if whole else 0.0
            candidates.append(Candidate(Chunk(row.doc_id, row.title, "", row.publisher, row.url, row.text), share,
                                        similarity.get(row.id, 0.0), lexical_rank.get(row.id), dense_rank.get(row.id)))
        return fuse(candidates, k, min_score, min_similarity if similarity else None)

    def _dense(self, session: Session, question: str, depth: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ids of the ``depth`` passages whose embeddings are nearest the question's, nearest
        first, and their cosine similarities; None when no passage has an embedding."""
        ids, matrix = self._embeddings(session)
        if not len(ids):
            return None
        similarities = matrix @ embedding.embed([question])[0]
        best = np.argpartition(-similarities, depth - 1)[:depth] if depth < len(ids) else np.arange(len(ids))
        best = best[np.argsort(-similarities[best], kind="stable")]
        return ids[best], similarities[best]

    def _embeddings(self, session: Session) -> tuple[np.ndarray, np.ndarray]:
        """Every stored embedding and its passage's id, read again when the passages changed."""
        version = tuple(session.execute(text("SELECT count(*), coalesce(max(id), 0) FROM library_passages")).one())
        with self._lock:
            if self._vectors is None or self._vectors[0] != version:
                rows = session.execute(text(
                    "SELECT id, embedding FROM library_passages WHERE embedding IS NOT NULL ORDER BY id")).all()
                ids = np.array([row.id for row in rows], dtype=np.int64)
                matrix = (np.frombuffer(b"".join(row.embedding for row in rows), dtype=np.float16)
                          .reshape(len(rows), embedding.DIMENSIONS).astype(np.float32))
                self._vectors = (version, ids, matrix)
            return self._vectors[1], self._vectors[2]

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


def _copy(session: Session, passages: list[tuple[int | None, Chunk]], vectors: np.ndarray | None) -> int:
    """Write passages (with the id of the admin's document each is from, None for the shipped
    library) and their embeddings (None: none) in the session's transaction, with COPY."""
    with session.connection().connection.driver_connection.cursor() as cursor, cursor.copy(
            "COPY library_passages (doc_id, document_id, title, heading, publisher, url, text, embedding) "
            "FROM STDIN") as copy:
        for row, (document_id, chunk) in enumerate(passages):
            vector = None if vectors is None else vectors[row].astype(np.float16).tobytes()
            copy.write_row((chunk.doc_id, document_id, chunk.title, chunk.heading, chunk.publisher, chunk.url,
                            chunk.text, vector))
    return len(passages)


def _dense_store(session: Session) -> bool:
    """Whether the loaded library has embeddings (its key says so)."""
    return bool(session.scalar(text("SELECT count(*) FROM library_loads WHERE key LIKE '%-dense'")))


def add_passages(session: Session, document_id: int, chunks: list[Chunk]) -> None:
    """Store an admin's document's passages in its own transaction (a load waits for it, and it for
    a load, so the load's copy of the documents is never doubled), embedded if the library is."""
    _lock(session, shared=True)
    _copy(session, [(document_id, chunk) for chunk in chunks], embedded(chunks, {}) if _dense_store(session) else None)


def ensure_loaded(sessions: sessionmaker[Session], key: str,
                  passages: Callable[[Session], Iterable[tuple[int | None, Chunk]]], dense: bool = False,
                  data_dir: Path | None = None) -> bool:
    """Load the library named ``key`` unless it is loaded: every passage replaced by ``passages``
    (the shipped ones and every admin document's, read in the loading transaction) in one
    transaction, so searches see the old library until the new one is whole. Processes starting
    together load it once: the others wait for the lock and find it loaded. ``dense``: with each
    passage's embedding, reusing those already stored for the same text and those shipped in ``data_dir``
    (the whole shipped library takes minutes to embed; the progress is logged). True if this call loaded it."""
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
        loading = list(passages(session))
        vectors = None
        if dense:
            stored = session.execute(text(
                "SELECT title, text, embedding FROM library_passages WHERE embedding IS NOT NULL"))
            known = {embedded_text(Chunk("", row.title, "", "", "", row.text)):
                     np.frombuffer(row.embedding, dtype=np.float16).astype(np.float32) for row in stored}
            chunks = [chunk for _, chunk in loading]
            vectors = embedded(chunks, (shipped_vectors(data_dir, chunks) if data_dir else {}) | known)
        for table in ("library_passages", "library_terms", "library_loads"):
            session.execute(text(f"DELETE FROM {table}"))
        count = _copy(session, loading, vectors)
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
