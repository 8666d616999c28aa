"""The library's text as passages: MedQuAD's pages from ``data/library`` and admins' documents, each
cut into chunks of about ``CHUNK_CHARS`` characters on paragraph and sentence boundaries."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MEDQUAD_FILE = "medquad.jsonl.gz"
CHUNK_CHARS = 600  # measured in bench/retrieval.py: shorter passages ranked the source page higher than 900
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    """One searchable passage of a library document."""

    doc_id: str  # "medquad-GARD-0000123-q1", or "doc-7" for an admin's document 7
    title: str
    heading: str  # the question a MedQuAD page answers; empty for an admin's document
    publisher: str
    url: str  # a link a student can open; empty for an admin's document
    text: str


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of about ``size`` characters: whole paragraphs where they fit, a long
    paragraph cut at sentence ends (a sentence longer than ``size`` alone is cut at a space)."""
    pieces: list[tuple[str, str]] = []  # (joiner to the piece before, text)
    for paragraph in (p.strip() for p in text.splitlines()):
        if not paragraph:
            continue
        joiner = "\n"
        for unit in _SENTENCE_END.split(paragraph) if len(paragraph) > size else [paragraph]:
            while len(unit) > size:
                cut = unit.rfind(" ", 0, size)
                cut = cut if cut > size // 2 else size
                pieces.append((joiner, unit[:cut].strip()))
                unit, joiner = unit[cut:].strip(), " "
            pieces.append((joiner, unit))
            joiner = " "
    chunks: list[str] = []
    for joiner, piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= size:
            chunks[-1] += joiner + piece
        else:
            chunks.append(piece)
    return chunks


def medquad_path(data_dir: Path) -> Path:
    """The shipped library's data file, or FileNotFoundError naming it and its setting."""
    path = data_dir / MEDQUAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the library's data file {path} is missing (CARELOOP_LIBRARY_DATA_DIR)")
    return path


def medquad_records(data_dir: Path) -> list[dict]:
    """The shipped MedQuAD documents: id, title, question, text, url, publisher, split."""
    with gzip.open(medquad_path(data_dir), "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def medquad_chunks(data_dir: Path) -> list[Chunk]:
    return [Chunk(record["id"], record["title"], record["question"], record["publisher"], record["url"], piece)
            for record in medquad_records(data_dir) for piece in chunk_text(record["text"])]


def shipped_digest(data_dir: Path) -> str:
    """The SHA-256 of the shipped data file (read again only when its size or time changes)."""
    path = medquad_path(data_dir)
    stat = path.stat()
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _file_digest(path: Path, size: int, modified: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
