"""Lexical search over the library's passages with bm25s (BM25 on sparse matrices, no model, no
network), built once per library content and kept on disk under ``$CARELOOP_HOME/library/index``.

Each passage is indexed with its page's title and heading (the question a MedQuAD page answers)
counted twice ahead of its text, and without a stopword list: the question words ("how many",
"who is at risk") are what tells a page's sections apart. Snowball stemming (PyStemmer). The figures
behind these choices are in BENCHMARKS.md ("Retrieval"). Both backends search a question for its
CARELOOP_RETRIEVAL_MAX_QUERY_TERMS rarest words (``library.passages.informative_terms``): a long
question costs about what a short one does.

Beside the BM25 index, each passage's sentence embedding (``library.embedding``; ``vectors.npy``,
float16 on disk): a search given ``min_similarity`` fuses the BM25 ranking with the embeddings' one
(``library.passages.fuse``), so that "my child has a fever and a stiff neck" finds meningitis's pages,
which share none of its words. Embedding the whole shipped library takes minutes (BENCHMARKS.md,
"Retrieval on patient questions"): a rebuild after an admin's change reuses every vector the last
index has for the same text, and a build logs its progress.

``Retriever`` is what the bot, review generation and evaluation ask, and the one place the backend
is chosen: this index, or PostgreSQL's full-text search (``library.postgres``, ``open_store``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import bm25s
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from careloop.log import get_logger
from careloop.settings import Settings
from library import embedding, postgres
from library.corpus import CHUNK_CHARS, Chunk, medquad_chunks, shipped_digest
from library.documents import LibraryDocument, chunks_of, document_chunks, documents_fingerprint
from library.passages import (
    MAX_QUERY_TERMS,
    STOPWORDS,
    Candidate,
    Passage,
    embedded,
    embedded_text,
    fuse,
    informative_terms,
    shipped_vectors,
    stemmer,
    tokens,
)

log = get_logger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each build step at DEBUG whatever our level

INDEX_VERSION = 2  # bump when the indexed text or the tokenizer changes: older indexes are rebuilt
BM25_K1, BM25_B = 1.2, 0.5
REFRESH_SECONDS = 5.0  # how often a running process checks whether admins changed the library


def indexed_text(chunk: Chunk) -> str:
    heading = f"{chunk.title}\n{chunk.heading}\n"
    return heading * 2 + chunk.text


class Library:
    """The passages, their BM25 index and their embeddings; ``search`` is safe to call from many threads."""

    def __init__(self, chunks: list[Chunk], retriever: bm25s.BM25, vectors: np.ndarray | None):
        self.chunks = chunks
        self.retriever = retriever
        self.vectors = vectors  # one L2-normalized row per chunk, float32; None: BM25 alone

    def __len__(self) -> int:
        return len(self.chunks)

    @classmethod
    def build(cls, chunks: list[Chunk], known: dict[str, np.ndarray] | None = None, dense: bool = False) -> Library:
        """The index of ``chunks``, with their embeddings if ``dense``; ``known``: vectors already
        computed, by ``embedded_text`` (those of the index this one replaces), so that only new
        passages are embedded."""
        retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        retriever.index(bm25s.tokenize([indexed_text(chunk) for chunk in chunks], stopwords=None, stemmer=stemmer(),
                                       show_progress=False), show_progress=False)
        return cls(chunks, retriever, embedded(chunks, known or {}) if dense else None)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory))
        if self.vectors is not None:  # float16: half the disk; cosines agree to 1e-3
            np.save(directory / "vectors.npy", self.vectors.astype(np.float16))
        with (directory / "chunks.jsonl").open("w", encoding="utf-8") as out:
            for chunk in self.chunks:
                out.write(json.dumps(chunk.__dict__, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Library:
        with (directory / "chunks.jsonl").open(encoding="utf-8") as lines:
            chunks = [Chunk(**json.loads(line)) for line in lines]
        vectors = None
        if (directory / "vectors.npy").is_file():
            vectors = np.load(directory / "vectors.npy").astype(np.float32)
            if vectors.shape != (len(chunks), embedding.DIMENSIONS):
                raise ValueError(f"vectors.npy holds {vectors.shape}, not one vector per passage")
        return cls(chunks, bm25s.BM25.load(str(directory), load_corpus=False), vectors)

    def known_vectors(self) -> dict[str, np.ndarray]:
        if self.vectors is None:
            return {}
        return {embedded_text(chunk): vector for chunk, vector in zip(self.chunks, self.vectors, strict=True)}

    def search(self, question: str, k: int, min_score: float = 0.0, max_terms: int = MAX_QUERY_TERMS,
               min_similarity: float | None = None) -> list[Passage]:
        """The best passage of each of the ``k`` best-matching pages (one per URL; an admin's
        document by its id), best first, numbered from 1; empty when none is relevant. BM25 alone
        (``min_similarity`` None): relevant is a ``match`` of at least ``min_score``. Hybrid: BM25's
        ranking fused with the embeddings' (``fuse``), relevant is either that or a cosine
        similarity of at least ``min_similarity`` (BM25 alone on an index built without embeddings).
        Of the question's words, the ``max_terms`` rarest are used (``query_terms``)."""
        if not self.chunks:
            return []
        depth = min(len(self.chunks), 8 * k)  # a page's other passages may crowd the first hits
        vocabulary = self.retriever.vocab_dict
        used = set(self.query_terms(question, max_terms))
        query = [token for token in tokens([question])[0] if token in used and token in vocabulary]
        lexical = np.zeros(0, dtype=np.int64)
        if query:
            found, _ = self.retriever.retrieve([query], k=depth, show_progress=False, n_threads=0)
            lexical = np.asarray(found[0])
        if min_similarity is None or self.vectors is None:
            shares = self.match(question, lexical, used)
            return fuse([Candidate(self.chunks[int(i)], float(share), 0.0, rank, None)
                         for rank, (i, share) in enumerate(zip(lexical, shares, strict=True))], k, min_score, None)
        similarities = self.vectors @ embedding.embed([question])[0]
        dense = np.argpartition(-similarities, depth - 1)[:depth] if depth < len(self.chunks) else np.arange(
            len(self.chunks))
        dense = dense[np.argsort(-similarities[dense], kind="stable")]
        candidates = np.asarray(list(dict.fromkeys([*lexical.tolist(), *dense.tolist()])), dtype=np.int64)
        shares = self.match(question, candidates, used)
        lexical_rank = {int(i): rank for rank, i in enumerate(lexical)}
        dense_rank = {int(i): rank for rank, i in enumerate(dense)}
        return fuse([Candidate(self.chunks[int(i)], float(share), float(similarities[i]), lexical_rank.get(int(i)),
                               dense_rank.get(int(i))) for i, share in zip(candidates, shares, strict=True)],
                    k, min_score, min_similarity)

    def query_terms(self, question: str, max_terms: int = MAX_QUERY_TERMS) -> list[str]:
        """The stemmed words of the question a search uses: its ``max_terms`` rarest distinct ones
        (``informative_terms``, by the number of passages holding each)."""
        indptr, vocabulary = self.retriever.scores["indptr"], self.retriever.vocab_dict
        found = {}
        for token in tokens([question])[0]:
            if token and token not in found:  # bm25s gives "" for no word
                column = vocabulary.get(token)
                found[token] = 0 if column is None else int(indptr[column + 1] - indptr[column])
        return informative_terms(found, max_terms)

    def match(self, question: str, candidates: np.ndarray, used: set[str] | None = None) -> np.ndarray:
        """For each candidate passage, the share of the question's content words (stopwords left
        out, each weighted by its IDF; of the words ``used`` only, if given) that it contains, 0 to 1:
        unlike a BM25 score it does not grow with the question's length, so one threshold tells
        "nothing relevant" for any question. A word no passage holds weighs the most and matches nowhere."""
        words = set(tokens([question], STOPWORDS)[0]) - {""}  # bm25s gives "" for no word
        if used is not None:
            words &= used
        if not words:
            return np.zeros(len(candidates))
        scores = self.retriever.scores
        indptr, indices, total = scores["indptr"], scores["indices"], scores["num_docs"]
        weight = np.log(1 + (total + 0.5) / 0.5)  # a word in no passage
        found = np.zeros(len(candidates))
        whole = 0.0
        for word in words:
            column = self.retriever.vocab_dict.get(word)
            if column is None:
                whole += weight
                continue
            start, end = indptr[column], indptr[column + 1]
            idf = np.log(1 + (total - (end - start) + 0.5) / ((end - start) + 0.5))
            whole += idf
            found += idf * np.isin(candidates, indices[start:end])
        return found / whole


def library_key(data_dir: Path, documents: str, dense: bool = False) -> str:
    """Names one library content: the shipped data, the admins' documents, and how both are indexed."""
    parts = [str(INDEX_VERSION), str(CHUNK_CHARS), shipped_digest(data_dir), documents] + (["dense"] if dense else [])
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def current_key(settings: Settings, sessions: sessionmaker[Session]) -> str:
    return library_key(settings.library_data_dir, documents_fingerprint(sessions), settings.retrieval_dense)


def build_or_load(settings: Settings, sessions: sessionmaker[Session], key: str | None = None) -> Library:
    """The library as it is now (``key``: its ``current_key``): loaded from its index on disk, or
    built and saved there first (beside it, then renamed: a reader never sees half an index); older
    indexes are removed. An index that cannot be saved (a read-only or full disk) is only a cache
    lost: the library built is used from memory, and the log says why."""
    key = key or current_key(settings, sessions)
    root = settings.resolved_library_index_dir
    directory = root / key
    if (directory / "chunks.jsonl").is_file():
        try:
            return Library.load(directory)
        except (OSError, ValueError) as exc:  # damaged on disk: build it again
            log.warning("library_index_unreadable", path=str(directory), error=str(exc))
    started = time.perf_counter()
    chunks = medquad_chunks(settings.library_data_dir) + document_chunks(sessions)
    # The shipped pages' embeddings come with careloop; those of the index this one replaces are reused.
    known = shipped_vectors(settings.library_data_dir, chunks) if settings.retrieval_dense else {}
    for other in sorted(root.iterdir(), key=lambda path: path.stat().st_mtime) if root.is_dir() else []:
        if other.name != key and not other.name.startswith(".") and (other / "vectors.npy").is_file():
            try:  # the index this one replaces: its passages that are unchanged need no embedding again
                known.update(Library.load(other).known_vectors())
            except (OSError, ValueError) as exc:
                log.warning("library_index_unreadable", path=str(other), error=str(exc))
    library = Library.build(chunks, known, settings.retrieval_dense)
    staging = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        library.save(staging)
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        log.warning("library_index_not_saved", path=str(root), error=str(exc)[:300])
        return library
    try:
        staging.rename(directory)
    except OSError:  # another process saved the same index first: theirs is the same
        shutil.rmtree(staging, ignore_errors=True)
    for other in root.iterdir():
        if other.name != key and not other.name.startswith("."):
            shutil.rmtree(other, ignore_errors=True)
    log.info("library_index_built", passages=len(library.chunks), seconds=round(time.perf_counter() - started, 1))
    return library


def open_store(settings: Settings, sessions: sessionmaker[Session]) -> postgres.Store:
    """The library in PostgreSQL (``CARELOOP_RETRIEVAL_BACKEND=postgresql``), loaded first if this
    library content is not: the shipped pages and every admin's document."""
    def passages(session: Session) -> list[tuple[int | None, Chunk]]:
        added = session.scalars(select(LibraryDocument).order_by(LibraryDocument.id))
        return ([(None, chunk) for chunk in medquad_chunks(settings.library_data_dir)]
                + [(document.id, chunk) for document in added for chunk in chunks_of(document)])

    dense = settings.retrieval_dense
    postgres.ensure_loaded(sessions, postgres.store_key(settings.library_data_dir, dense), passages, dense,
                           settings.library_data_dir)
    return postgres.Store(sessions)


class Retriever:
    """What the bot and the trainer ask: the configured number of passages for a question, from
    the library as admins last left it. The one place the search backend is chosen
    (``CARELOOP_RETRIEVAL_BACKEND``): the bm25s index, checked every ``refresh_seconds`` for admins'
    changes, or PostgreSQL's store, which has each change as it commits (no bm25s index is built
    for it: ``library()`` after an admin's change, as the CLI and the admin page call it, only checks
    that the store is loaded)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], refresh_seconds: float = REFRESH_SECONDS):
        self.settings = settings
        self.sessions = sessions
        self.refresh_seconds = refresh_seconds
        self._library: Library | postgres.Store | None = None
        self._key = ""
        self._checked = 0.0
        self._lock = threading.Lock()

    def library(self) -> Library | postgres.Store:
        with self._lock:
            if self.settings.resolved_retrieval_backend == "postgresql":
                if self._library is None:
                    self._library = open_store(self.settings, self.sessions)
                return self._library
            now = time.monotonic()
            if self._library is None or now - self._checked >= self.refresh_seconds:
                self._checked = now
                key = current_key(self.settings, self.sessions)
                if key != self._key:
                    self._library, self._key = build_or_load(self.settings, self.sessions, key), key
            return self._library

    def warm_up(self) -> None:
        """Have the library ready ahead of the first question: the index loaded or built, or the
        store loaded (a failure is logged; searches retry)."""
        try:
            self.library()
        except Exception as exc:  # noqa: BLE001 - a thread of its own: say why, the first search tries again
            log.error("library_warm_up_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def search(self, question: str, k: int | None = None) -> list[Passage]:
        """Up to ``k`` passages (default CARELOOP_RETRIEVAL_TOP_K) relevant to ``question``, searched
        for its CARELOOP_RETRIEVAL_MAX_QUERY_TERMS rarest words, and by meaning unless
        CARELOOP_RETRIEVAL_DENSE is off."""
        settings = self.settings
        return self.library().search(question, k or settings.retrieval_top_k, settings.retrieval_min_score,
                                     settings.retrieval_max_query_terms,
                                     settings.retrieval_min_similarity if settings.retrieval_dense else None)
