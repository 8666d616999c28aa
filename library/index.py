"""Lexical search over the library's passages with bm25s (BM25 on sparse matrices, no model, no
network), built once per library content and kept on disk under ``$CARELOOP_HOME/library/index``.

Each passage is indexed with its page's title and heading (the question a MedQuAD page answers)
counted twice ahead of its text, and without a stopword list: the question words ("how many",
"who is at risk") are what tells a page's sections apart. Porter stemming (nltk). The figures
behind these choices are in BENCHMARKS.md ("Retrieval").
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from sqlalchemy.orm import Session, sessionmaker

from careloop.log import get_logger
from careloop.settings import Settings
from library.corpus import CHUNK_CHARS, Chunk, medquad_chunks, medquad_path
from library.documents import document_chunks, documents_fingerprint

log = get_logger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each build step at DEBUG whatever our level

INDEX_VERSION = 1  # bump when the indexed text or the tokenizer changes: older indexes are rebuilt
BM25_K1, BM25_B = 1.2, 0.5
REFRESH_SECONDS = 5.0  # how often a running process checks whether admins changed the library


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
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


# What a question says besides its subject: bm25s's English stopwords and the words questions are
# asked with. Left out when judging whether a passage is relevant (``Library.match``), kept for ranking.
STOPWORDS = sorted(set(STOPWORDS_EN) | {
    "what", "how", "why", "when", "where", "who", "whom", "which", "whose", "do", "does", "did", "done", "can",
    "could", "would", "should", "may", "might", "must", "shall", "will", "tell", "know", "explain", "please", "me",
    "my", "i", "you", "your", "am", "is", "are", "was", "were", "be", "been", "it", "its", "get", "much", "many",
    "about", "someone", "something", "anything", "thing", "things", "mean", "means", "hi", "hello", "thanks"})


def tokens(texts: list[str], stopwords: list[str] | None = None) -> list[list[str]]:
    """Lower-cased, stemmed words of each text, without ``stopwords``."""
    return bm25s.tokenize(texts, lower=True, stopwords=stopwords, stemmer=_stemmer(), return_ids=False,
                          show_progress=False)


def indexed_text(chunk: Chunk) -> str:
    heading = f"{chunk.title}\n{chunk.heading}\n"
    return heading * 2 + chunk.text


class Library:
    """The passages and their BM25 index; ``search`` is safe to call from many threads."""

    def __init__(self, chunks: list[Chunk], retriever: bm25s.BM25):
        self.chunks = chunks
        self.retriever = retriever

    @classmethod
    def build(cls, chunks: list[Chunk]) -> Library:
        retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        retriever.index(bm25s.tokenize([indexed_text(chunk) for chunk in chunks], stopwords=None, stemmer=_stemmer(),
                                       show_progress=False), show_progress=False)
        return cls(chunks, retriever)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory))
        with (directory / "chunks.jsonl").open("w", encoding="utf-8") as out:
            for chunk in self.chunks:
                out.write(json.dumps(chunk.__dict__, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Library:
        with (directory / "chunks.jsonl").open(encoding="utf-8") as lines:
            chunks = [Chunk(**json.loads(line)) for line in lines]
        return cls(chunks, bm25s.BM25.load(str(directory), load_corpus=False))

    def search(self, question: str, k: int, min_score: float = 0.0) -> list[Passage]:
        """The best passage of each of the ``k`` best-matching documents (BM25) whose ``match`` is
        at least ``min_score``, best first, numbered from 1; empty when none is."""
        vocabulary = self.retriever.vocab_dict
        query = [token for token in tokens([question])[0] if token and token in vocabulary]
        if not query or not self.chunks:
            return []
        depth = min(len(self.chunks), 8 * k)  # a document's other passages may crowd the first hits
        found, _ = self.retriever.retrieve([query], k=depth, show_progress=False, n_threads=0)
        candidates = np.asarray(found[0])
        scores = self.match(question, candidates)
        passages: list[Passage] = []
        seen: set[str] = set()
        for index, score in zip(candidates, scores, strict=True):
            chunk = self.chunks[int(index)]
            if len(passages) == k:
                break
            if chunk.doc_id in seen or score < min_score:
                continue
            seen.add(chunk.doc_id)
            passages.append(Passage(len(passages) + 1, chunk.doc_id, chunk.title, chunk.publisher, chunk.url,
                                    chunk.text, round(float(score), 3)))
        return passages

    def match(self, question: str, candidates: np.ndarray) -> np.ndarray:
        """For each candidate passage, the share of the question's content words (stopwords left
        out, each weighted by its IDF) that it contains, 0 to 1: unlike a BM25 score it does not
        grow with the question's length, so one threshold tells "nothing relevant" for any question.
        A word no passage holds weighs the most and matches nowhere."""
        words = set(tokens([question], STOPWORDS)[0]) - {""}  # bm25s gives "" for no word
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


@lru_cache(maxsize=4)
def _file_digest(path: Path, size: int, modified: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def library_key(data_dir: Path, documents: str) -> str:
    """Names one library content: the shipped data, the admins' documents, and how both are indexed."""
    shipped = medquad_path(data_dir)
    stat = shipped.stat()
    parts = [str(INDEX_VERSION), str(CHUNK_CHARS), _file_digest(shipped, stat.st_size, stat.st_mtime_ns), documents]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def current_key(settings: Settings, sessions: sessionmaker[Session]) -> str:
    return library_key(settings.library_data_dir, documents_fingerprint(sessions))


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
    library = Library.build(medquad_chunks(settings.library_data_dir) + document_chunks(sessions))
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


class Retriever:
    """What the bot and the trainer ask: the configured number of passages for a question, from
    the library as admins last left it (checked every ``refresh_seconds``)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], refresh_seconds: float = REFRESH_SECONDS):
        self.settings = settings
        self.sessions = sessions
        self.refresh_seconds = refresh_seconds
        self._library: Library | None = None
        self._key = ""
        self._checked = 0.0
        self._lock = threading.Lock()

    def library(self) -> Library:
        with self._lock:
            now = time.monotonic()
            if self._library is None or now - self._checked >= self.refresh_seconds:
                self._checked = now
                key = current_key(self.settings, self.sessions)
                if key != self._key:
                    self._library, self._key = build_or_load(self.settings, self.sessions, key), key
            return self._library

    def warm_up(self) -> None:
        """Load or build the index ahead of the first question (a failure is logged; searches retry)."""
        try:
            self.library()
        except Exception as exc:  # noqa: BLE001 - a thread of its own: say why, the first search tries again
            log.error("library_warm_up_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def search(self, question: str, k: int | None = None) -> list[Passage]:
        """Up to ``k`` passages (default CARELOOP_RETRIEVAL_TOP_K) relevant to ``question``."""
        return self.library().search(question, k or self.settings.retrieval_top_k, self.settings.retrieval_min_score)
