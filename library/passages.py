"""What a search of the library returns (``Passage``), how a question's words are read and how the
lexical and meaning-based rankings are fused into sources (``fuse``), shared by both search backends
(``library.index``'s bm25s index and ``library.postgres``'s store) and by the citation check
(``library.grounding``)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from careloop.log import get_logger
from careloop.settings import Settings
from library import embedding
from library.corpus import Chunk

log = get_logger(__name__)

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


# Hosts of the shipped library's http:// links that serve the same pages over https (U.S. federal
# sites are HTTPS-only since OMB M-15-13, 2015): a link is shown and cited with https there.
# nihseniorhealth.gov is left as it is: the site was retired in 2018 and only redirects.
HTTPS_HOSTS = frozenset({"www.cdc.gov", "www.niddk.nih.gov", "www.ninds.nih.gov", "www.nhlbi.nih.gov",
                         "www.nlm.nih.gov", "ghr.nlm.nih.gov", "rarediseases.info.nih.gov", "www.cancer.gov"})
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): a rank's weight is 1 / (60 + rank)


def https_url(url: str) -> str:
    """``url`` with https where its host is known to serve it (``HTTPS_HOSTS``), else as it is."""
    if url.startswith("http://") and urlsplit(url).hostname in HTTPS_HOSTS:
        return "https://" + url[len("http://"):]
    return url


def embedded_text(chunk: Chunk) -> str:
    """What a passage's embedding is computed from: its page's title says what its text is about."""
    return f"{chunk.title}\n{chunk.text}"


@dataclass(frozen=True)
class Candidate:
    """A passage one of the rankings found, with what decides whether it is relevant."""

    chunk: Chunk
    share: float  # of the question's content words, weighted by IDF, the share it holds (0-1)
    similarity: float  # cosine similarity of its embedding to the question's (0 when not computed)
    lexical_rank: int | None  # its place in BM25's ranking, from 0 (None: not among BM25's hits)
    dense_rank: int | None  # its place in the embeddings' ranking (None: not among its hits)


def fuse(candidates: list[Candidate], k: int, min_score: float, min_similarity: float | None) -> list[Passage]:
    """The best passage of each of the ``k`` best sources among ``candidates``, numbered from 1: one
    per page (URL; an admin's document, which has none, by its id), ordered by reciprocal rank fusion
    of the two rankings (BM25's alone when ``min_similarity`` is None). Relevant is a ``share`` of at
    least ``min_score`` or a ``similarity`` of at least ``min_similarity``; the score given is the
    larger of the two that count."""
    def fused(candidate: Candidate) -> float:
        return sum(1 / (RRF_K + rank + 1) for rank in (candidate.lexical_rank, candidate.dense_rank)
                   if rank is not None)

    passages: list[Passage] = []
    seen: set[str] = set()
    for candidate in sorted(candidates, key=fused, reverse=True):  # stable: BM25's order among equals
        chunk = candidate.chunk
        source = chunk.url or chunk.doc_id
        if len(passages) == k:
            break
        similar = min_similarity is not None and candidate.similarity >= min_similarity
        if source in seen or not (candidate.share >= min_score or similar):
            continue
        seen.add(source)
        score = candidate.share if min_similarity is None else max(candidate.share, candidate.similarity)
        passages.append(Passage(len(passages) + 1, chunk.doc_id, chunk.title, chunk.publisher, https_url(chunk.url),
                                chunk.text, round(float(score), 3)))
    return passages


SHIPPED_VECTORS = "medquad_vectors.npz"  # beside medquad.jsonl.gz; `careloop library vectors` writes it


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def shipped_vectors(data_dir: Path, chunks: list[Chunk]) -> dict[str, np.ndarray]:
    """The embeddings of the shipped library's passages among ``chunks``, computed once and shipped
    (``SHIPPED_VECTORS``, int8 with a scale per row: cosines within 0.01 of float32's), so a fresh install
    embeds only admins' documents, not 38k passages (18-26 minutes on 2 cores). Keyed as ``known`` is
    (``embedded_text``); empty when the file is missing or was made by another model."""
    path = data_dir / SHIPPED_VECTORS
    if not path.is_file():
        return {}
    with np.load(path) as data:
        if str(data["model"]) != embedding.MODEL:
            log.warning("shipped_vectors_other_model", path=str(path), model=str(data["model"]))
            return {}
        rows = {key.tobytes(): row for row, key in enumerate(data["keys"])}
        codes, scales = data["vectors"], data["scales"]
    found = {}
    for chunk in chunks:
        text = embedded_text(chunk)
        row = rows.get(_text_key(text))
        if row is not None:
            vector = codes[row].astype(np.float32) * np.float32(scales[row])
            found[text] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return found


def write_shipped_vectors(data_dir: Path, chunks: list[Chunk], vectors: np.ndarray) -> Path:
    """Save ``vectors`` (one L2-normalized row per chunk) as the shipped embeddings of ``chunks``."""
    scales = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127
    codes = np.round(vectors / scales[:, None]).astype(np.int8)
    keys = np.frombuffer(b"".join(_text_key(embedded_text(chunk)) for chunk in chunks), dtype=np.uint8)
    path = data_dir / SHIPPED_VECTORS
    np.savez_compressed(path, model=np.array(embedding.MODEL), keys=keys.reshape(len(chunks), 16), vectors=codes,
                        scales=scales.astype(np.float32))
    return path


def embedded(chunks: list[Chunk], known: dict[str, np.ndarray]) -> np.ndarray:
    """Each chunk's embedding: from ``known`` where it has the chunk's text, else computed, with
    the progress logged every tenth (the whole shipped library takes minutes)."""
    texts = [embedded_text(chunk) for chunk in chunks]
    vectors = np.zeros((len(chunks), embedding.DIMENSIONS), dtype=np.float32)
    missing = []
    for row, text in enumerate(texts):
        if text in known:
            vectors[row] = known[text]
        else:
            missing.append(row)
    if not missing:
        return vectors
    started, logged = time.perf_counter(), [0]
    log.info("library_embedding", passages=len(missing), reused=len(chunks) - len(missing))

    def progress(done: int, total: int) -> None:
        if done == total or done - logged[0] >= total / 10:
            logged[0] = done
            log.info("library_embedding_progress", done=done, total=total,
                     seconds=round(time.perf_counter() - started, 1))

    vectors[missing] = embedding.embed([texts[row] for row in missing], progress)
    return vectors
