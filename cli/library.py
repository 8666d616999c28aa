"""`careloop library`: the documents admins add to the medical library answers are grounded in.
Each change is audited, and the search index is rebuilt at once so running bots pick it up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from careloop.settings import get_settings
from cli.common import ActorOption, CommandError, actor_name, console, database_sessions

app = typer.Typer(help="The medical library: add, list and remove admins' documents (Markdown, text, PDF); "
                  "`vectors` re-embeds the shipped pages (maintainers).",
                  no_args_is_help=True)


@contextmanager
def _refusals() -> Iterator[None]:
    from library.documents import DocumentRefused

    try:
        yield
    except DocumentRefused as exc:
        raise CommandError(f"nothing changed in the library:\n{exc}") from None


def _reindex(sessions) -> None:
    from library.index import Retriever

    started = time.perf_counter()
    library = Retriever(get_settings(), sessions).library()  # bm25s: built now; PostgreSQL: written with the change
    console.print(f"search index ready: {len(library):,} passages ({time.perf_counter() - started:.1f} s)")


@app.command("add")
def library_add(paths: Annotated[list[Path], typer.Argument(help="Markdown (.md), text (.txt) or PDF files.")],
                actor: ActorOption = None) -> None:
    """Add documents (all or none: a file that is refused stops the batch, with the reason)."""
    from library.documents import DocumentLimits, add_documents
    from library.grounding import INSTRUCTION_LIKE_WARNING, instruction_like

    sessions = database_sessions()
    settings = get_settings()
    with _refusals():
        added = add_documents(sessions, paths, actor_name(actor), settings.library_max_document_bytes,
                              DocumentLimits.of(settings))
    for document in added:
        console.print(f"added document {document.id}: {document.title} ({document.filename}, {document.kind}, "
                      f"{document.passages} passages)", markup=False)
        for quote in instruction_like(document.text):
            console.print(f"  check it: {INSTRUCTION_LIKE_WARNING} «{quote}»", markup=False)
    _reindex(sessions)


@app.command("list")
def library_list() -> None:
    """The admins' documents, with where each came from; the shipped MedQuAD pages are counted below."""
    from library.corpus import medquad_records
    from library.documents import documents

    rows = documents(database_sessions())
    table = Table(title="library documents added by admins")
    for column in ("id", "title", "file", "kind", "size", "passages", "added by", "added"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row.id), row.title, row.filename, row.kind, f"{row.size_bytes:,} B", str(row.passages),
                      row.added_by, f"{row.created_at:%Y-%m-%d %H:%M}")
    console.print(table if rows else "no documents added by admins yet")
    shipped = len(medquad_records(get_settings().library_data_dir))
    console.print(f"plus {shipped:,} MedQuAD pages of the U.S. NIH and CDC shipped with careloop (CC BY 4.0)")


@app.command("remove")
def library_remove(document_id: Annotated[int, typer.Argument(help="The id `careloop library list` shows.")],
                   actor: ActorOption = None) -> None:
    """Remove a document from the library (audited)."""
    from library.documents import remove_document

    sessions = database_sessions()
    with _refusals():
        removed = remove_document(sessions, document_id, actor_name(actor))
    console.print(f"removed document {removed.id}: {removed.title} ({removed.filename})", markup=False)
    _reindex(sessions)


@app.command("vectors")
def library_vectors() -> None:
    """For maintainers: embed the shipped library into medquad_vectors.npz beside its data file (after a
    change to the library's data, its chunking or the embedding model), so no install has to embed it
    (18-26 minutes on 2 cores). Passages an index here has embedded already are reused."""
    import numpy as np

    from library.corpus import medquad_chunks
    from library.index import Library
    from library.passages import embedded, write_shipped_vectors

    settings = get_settings()
    chunks = medquad_chunks(settings.library_data_dir)
    known: dict[str, np.ndarray] = {}
    root = settings.resolved_library_index_dir
    for index in root.iterdir() if root.is_dir() else []:
        if (index / "vectors.npy").is_file():
            known.update(Library.load(index).known_vectors())
    started = time.perf_counter()
    path = write_shipped_vectors(settings.library_data_dir, chunks, embedded(chunks, known))
    console.print(f"{len(chunks):,} passages embedded into {path} ({time.perf_counter() - started:.0f} s)")
