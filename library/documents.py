"""Admins' own documents in the library (a course's notes: Markdown, plain text, PDF).

Kept in the database (table ``library_documents``: the extracted text, its file name and hash), so
every bot, worker and trainer sharing the database sees the same library, a document and its audit
row commit together, and the search index (``library.index``) is only ever a copy built from it. On
PostgreSQL a document's passages are written to the store ``library.postgres`` searches in the same
transaction, and deleted with it.
A file is checked whole before anything is stored: one that is not text, an unreadable or
text-less PDF, one over the size, text or page limits, one that would take the library over its
passage limit, or one already in the library is refused with a one-line reason, and a batch with any
refused file adds none. A PDF is read in a child process with its memory and time capped
(``library.pdf``): a PDF bomb costs that child, not the bot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from careloop import audit
from careloop.db import Base, transaction, utcnow
from careloop.settings import Settings
from careloop.text import storable
from library import postgres
from library.corpus import Chunk, chunk_text
from library.pdf import PdfUnreadable, pdf_text

KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".pdf": "pdf"}


class LibraryDocument(Base):
    """One document an admin added: its text as extracted, and where it came from."""

    __tablename__ = "library_documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(256))
    filename: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the file: the same file is added once
    size_bytes: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    added_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def doc_id(self) -> str:
        return f"doc-{self.id}"

    @property
    def passages(self) -> int:
        return len(chunk_text(self.text))


class DocumentRefused(ValueError):
    """Nothing was added or removed; the message says why, one line per file."""


@dataclass(frozen=True)
class DocumentLimits:
    """How much text a document and the library may hold, and what reading a PDF may cost: the
    CARELOOP_LIBRARY_* settings (``DocumentLimits.of(settings)``)."""

    max_chars: int
    max_pdf_pages: int
    max_passages: int
    pdf_timeout_seconds: float
    pdf_memory_bytes: int

    @classmethod
    def of(cls, settings: Settings | None = None) -> DocumentLimits:
        """The limits ``settings`` set; without settings, their defaults."""
        settings = settings or Settings.model_construct()
        return cls(settings.library_max_document_chars, settings.library_max_pdf_pages,
                   settings.library_max_passages, settings.library_pdf_timeout_seconds,
                   settings.library_pdf_memory_bytes)


@dataclass(frozen=True)
class NewDocument:
    path: Path
    title: str
    kind: str
    sha256: str
    size_bytes: int
    text: str

    @cached_property
    def passages(self) -> int:
        return len(chunk_text(self.text))


def read_document(path: Path, max_bytes: int, limits: DocumentLimits | None = None) -> NewDocument:
    """The document at ``path`` checked and its text extracted, or ``DocumentRefused`` saying why."""
    limits = limits or DocumentLimits.of()
    name = path.name
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise DocumentRefused(f"{name}: not a Markdown, plain-text or PDF file (the library takes .md, .txt, .pdf)")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentRefused(f"{name}: {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.1f} MiB limit "
                                  "(CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES)")
        data = path.read_bytes()
    except OSError as exc:
        raise DocumentRefused(f"{name}: cannot be read ({exc.strerror or exc})") from None
    title, text = _pdf_text(name, data, limits) if kind == "pdf" else _plain_text(name, data)
    text = "\n".join(line.rstrip() for line in text.splitlines()).strip()
    if len(text) > limits.max_chars:
        raise DocumentRefused(f"{name}: its text is over {limits.max_chars:,} characters "
                              "(CARELOOP_LIBRARY_MAX_DOCUMENT_CHARS)")
    if not re.search(r"\w{2}", text):
        raise DocumentRefused(f"{name}: has no text to index" + (" (a scanned PDF needs OCR first)" if kind == "pdf"
                                                                 else ""))
    if kind == "markdown" and not title:
        heading = re.search(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)
        title = heading.group(1).strip() if heading else ""
    title = (title or path.stem.replace("_", " ").replace("-", " ")).strip()[:256]
    return NewDocument(path, title, kind, hashlib.sha256(data).hexdigest(), size, text)


def _plain_text(name: str, data: bytes) -> tuple[str, str]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentRefused(f"{name}: is not text (not UTF-8); save it as UTF-8 text or Markdown") from None
    if "\x00" in text or sum(not ch.isprintable() and ch not in "\n\r\t\f" for ch in text) > len(text) // 100:
        raise DocumentRefused(f"{name}: is not text (it holds binary data)")
    return "", text


def _pdf_text(name: str, data: bytes, limits: DocumentLimits) -> tuple[str, str]:
    try:
        title, text = pdf_text(data, max_chars=limits.max_chars, max_pages=limits.max_pdf_pages,
                               timeout_seconds=limits.pdf_timeout_seconds, memory_bytes=limits.pdf_memory_bytes)
    except PdfUnreadable as exc:
        raise DocumentRefused(f"{name}: {exc}") from None
    # A PDF's strings may hold NUL (PostgreSQL refuses it in text) or a lone surrogate: kept out.
    return storable(title), storable(text)


def add_documents(sessions: sessionmaker[Session], paths: list[Path], actor: str, max_bytes: int,
                  limits: DocumentLimits | None = None) -> list[LibraryDocument]:
    """Add every file, each audited, or none: ``DocumentRefused`` lists each file refused and why."""
    limits = limits or DocumentLimits.of()
    read: list[NewDocument] = []
    reasons: list[str] = []
    for path in paths:
        try:
            read.append(read_document(path, max_bytes, limits))
        except DocumentRefused as exc:
            reasons.append(str(exc))
    first_of: dict[str, NewDocument] = {}
    for document in read:
        if document.sha256 in first_of:
            reasons.append(f"{document.path.name}: is the same file as {first_of[document.sha256].path.name}")
        first_of.setdefault(document.sha256, document)
    with sessions() as session:
        for document in read:
            known = session.scalar(select(LibraryDocument).where(LibraryDocument.sha256 == document.sha256))
            if known is not None:
                reasons.append(f"{document.path.name}: already in the library as document {known.id} "
                               f"({known.title}, added by {known.added_by})")
        # Counted from the texts, as the index cuts them; two admins adding at once may pass it together.
        total = sum(len(chunk_text(text)) for text in session.scalars(select(LibraryDocument.text)))
        for document in read:
            total += document.passages
            if total > limits.max_passages:
                reasons.append(f"{document.path.name}: its {document.passages:,} passages would take the library's "
                               f"added documents to {total:,}, over the limit of {limits.max_passages:,} passages "
                               "(CARELOOP_LIBRARY_MAX_PASSAGES)")
    if reasons:
        raise DocumentRefused("\n".join(reasons))
    try:
        with transaction(sessions) as session:
            added = []
            for document in read:
                row = LibraryDocument(title=document.title, filename=document.path.name[:256], kind=document.kind,
                                      sha256=document.sha256, size_bytes=document.size_bytes, text=document.text,
                                      added_by=actor)
                session.add(row)
                session.flush()
                if session.get_bind().dialect.name == "postgresql":  # searchable when it commits, not before
                    postgres.add_passages(session, row.id, chunks_of(row))
                audit.record(session, actor, "library.add", f"document {row.id}", filename=row.filename,
                             title=row.title, sha256=row.sha256, size_bytes=row.size_bytes, passages=row.passages)
                added.append(row)
    except IntegrityError:  # the same file added by someone else in the meantime
        raise DocumentRefused("one of these files was added to the library by someone else just now; nothing "
                              "was added: run it again to see which") from None
    return added


def documents(sessions: sessionmaker[Session]) -> list[LibraryDocument]:
    with sessions() as session:
        return list(session.scalars(select(LibraryDocument).order_by(LibraryDocument.id)))


def remove_document(sessions: sessionmaker[Session], document_id: int, actor: str) -> LibraryDocument:
    with transaction(sessions) as session:
        row = session.get(LibraryDocument, document_id)
        if row is None:
            raise DocumentRefused(f"there is no document {document_id} in the library (`careloop library list` "
                                  "shows them)")
        audit.record(session, actor, "library.remove", f"document {row.id}", filename=row.filename,
                     title=row.title, sha256=row.sha256)
        session.delete(row)
    return row


def documents_fingerprint(sessions: sessionmaker[Session]) -> str:
    """Changes whenever a document is added or removed (the search index is rebuilt then)."""
    with sessions() as session:
        rows = session.execute(select(LibraryDocument.id, LibraryDocument.sha256).order_by(LibraryDocument.id)).all()
    return hashlib.sha256(";".join(f"{row.id}:{row.sha256}" for row in rows).encode()).hexdigest()[:16]


def chunks_of(document: LibraryDocument) -> list[Chunk]:
    return [Chunk(document.doc_id, document.title, "", f"added by {document.added_by} ({document.filename})", "",
                  piece) for piece in chunk_text(document.text)]


def document_chunks(sessions: sessionmaker[Session]) -> list[Chunk]:
    return [chunk for row in documents(sessions) for chunk in chunks_of(row)]
