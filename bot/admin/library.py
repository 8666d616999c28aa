"""The Library tab: the admins' documents in the medical library (course notes, protocols), added by
upload or removed once confirmed, beside the MedQuAD pages shipped with careloop. Each goes through
``library.documents`` as `careloop library` does, audited with the admin as the actor, and the search
index is rebuilt so that answers cite the change within seconds."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from gradio.utils import get_upload_folder
from sqlalchemy import select

from bot.access import Viewer
from bot.admin.shared import AdminServices, AdminTab, Follow, build_confirm_panel, refused, shown_rows
from bot.errors import UserError
from bot.pages import Require
from bot.rendering import literal
from careloop.log import get_logger
from library.corpus import medquad_records
from library.documents import (
    DocumentLimits,
    DocumentRefused,
    LibraryDocument,
    add_documents,
    documents,
    remove_document,
)
from library.grounding import INSTRUCTION_LIKE_WARNING, instruction_like
from library.index import Retriever

log = get_logger(__name__)


@dataclass
class Library:
    services: AdminServices

    def table(self) -> pd.DataFrame:
        rows = [{"id": d.id, "title": d.title, "file": d.filename, "kind": d.kind, "size": _size(d.size_bytes),
                 "passages": d.passages, "added by": d.added_by, "added": f"{d.created_at:%Y-%m-%d %H:%M}"}
                for d in documents(self.services.sessions)]
        return pd.DataFrame(rows, columns=["id", "title", "file", "kind", "size", "passages", "added by", "added"])

    def note(self, table: pd.DataFrame) -> str:
        """What the library holds besides the table: the shipped MedQuAD pages, and what may be added."""
        try:
            shipped = (f"{self._shipped_pages:,} MedQuAD pages of the U.S. NIH and CDC shipped with careloop "
                       "(CC BY 4.0)")
        except (OSError, ValueError) as exc:
            shipped = f"no shipped pages: {exc}"
        mine = ("No documents added by admins yet" if table.empty
                else f"{len(table)} document{'s' if len(table) > 1 else ''} added by admins")
        return (f"{mine}; the library also holds {shipped}. Add course notes as Markdown (.md), text (.txt) or "
                f"PDF (.pdf), at most {_size(self.services.settings.library_max_document_bytes)} each: answers "
                "cite them within seconds.")

    @cached_property
    def _shipped_pages(self) -> int:  # parsing the shipped file takes a moment: once per process
        return len(medquad_records(self.services.settings.library_data_dir))

    def listing(self) -> set[tuple[str, str, str]]:
        """(id, title, file) of each admin's document: what the table lists, read without the texts (a
        passage count chunks each document's whole text: the timer's ticks compare this instead)."""
        with self.services.sessions() as session:
            rows = session.execute(select(LibraryDocument.id, LibraryDocument.title, LibraryDocument.filename))
            return {(str(id_), title, filename) for id_, title, filename in rows}

    def document_choices(self) -> list[tuple[str, str]]:
        return [(f"{d.id} · {d.title} ({d.filename})", str(d.id)) for d in documents(self.services.sessions)]

    def add_documents(self, viewer: Viewer, paths: list[str] | None) -> str:
        """Add the uploaded files to the library, all or none (``UserError`` lists each refused file
        and why), audited with the admin as the actor; the search index is rebuilt."""
        if not paths:
            raise UserError("Choose one or more files to add: Markdown (.md), text (.txt) or PDF (.pdf).")
        try:
            settings = self.services.settings
            added = add_documents(self.services.sessions, [Path(path) for path in paths], f"bot:{viewer.username}",
                                  settings.library_max_document_bytes, DocumentLimits.of(settings))
        except DocumentRefused as exc:
            raise UserError("**Nothing was added to the library:**\n\n" + "\n".join(
                f"- {literal(line)}" for line in str(exc).splitlines())) from None
        listed = "\n".join(f"- document {d.id}: **{literal(d.title)}** ({literal(d.filename)}, {d.kind}, "
                           f"{d.passages} passages)" for d in added)
        warnings = "".join(f"\n\n**Check document {d.id}:** {literal(INSTRUCTION_LIKE_WARNING)}\n\n"
                           + "\n".join(f"> {literal(quote)}" for quote in quotes)
                           for d in added if (quotes := instruction_like(d.text)))
        return f"Added to the library:\n\n{listed}{warnings}\n\n{self._reindexed()}"

    def removal_confirmation(self, document_id: str | None) -> str:
        document = self._document(document_id)
        return (f"Remove document {document.id}, **{literal(document.title)}** ({literal(document.filename)}, "
                f"added by {literal(document.added_by)}): answers stop citing it within seconds.")

    def remove_document(self, viewer: Viewer, document_id: str | None) -> str:
        document = self._document(document_id)
        try:
            remove_document(self.services.sessions, document.id, f"bot:{viewer.username}")
        except DocumentRefused as exc:  # removed by someone else since the dialog
            raise UserError(f"Not removed: {exc}.") from None
        return (f"Removed document {document.id}, **{literal(document.title)}** ({literal(document.filename)}). "
                f"{self._reindexed()}")

    def _document(self, document_id: str | None) -> LibraryDocument:
        if not document_id:
            raise UserError("Choose the document to remove.")
        found = next((d for d in documents(self.services.sessions) if str(d.id) == str(document_id)), None)
        if found is None:
            raise UserError(f"There is no document {document_id} in the library (removed already?).")
        return found

    def _reindexed(self) -> str:
        """The search index rebuilt for the library as it is now, as `careloop library add` does; each
        process's retriever loads it at its next check (every few seconds). On PostgreSQL there is none
        to build: the change is in the store as it commits (a bm25s index was built after each change
        all the same, 3.5 to 6 s of CPU for nothing: issue 31, 6)."""
        try:
            library = Retriever(self.services.settings, self.services.sessions).library()
        except OSError as exc:
            log.error("library_reindex_failed", error=str(exc)[:300])
            return (f"The search index could not be rebuilt now ({exc.strerror or exc}); the chat rebuilds it at "
                    "its next question.")
        return f"The search index is ready ({len(library):,} passages)."


def _size(size_bytes: int) -> str:
    if size_bytes >= 2**20:
        return f"{size_bytes / 2**20:.1f} MiB"
    return f"{size_bytes / 1024:.1f} KiB" if size_bytes >= 1024 else f"{size_bytes} B"


def discard_uploads(paths: list[str] | None) -> None:
    """Delete uploaded files once read. Gradio keeps every upload in its cache (the bot's private
    ``gradio-cache``) until its sweep CARELOOP_BOT_DOWNLOAD_SECONDS later; a library document is
    read once, into the database, so its upload is deleted at once and uploads do not pile up.
    Only files in Gradio's upload folder are touched."""
    folder = Path(get_upload_folder()).resolve()
    for path in (Path(p).resolve() for p in paths or []):
        if folder in path.parents:
            path.unlink(missing_ok=True)
            with suppress(OSError):  # Gradio's folder per upload (named by its hash): gone once empty
                path.parent.rmdir()


def build_library_tab(library: Library, require: Require) -> AdminTab:
    """The tab; it loads its table when selected (not with the admin page's overview)."""
    with gr.Tab("Library", elem_id="tab-library") as tab:
        note = gr.Markdown(elem_id="library-note")
        message = gr.Markdown(elem_id="library-message")
        table = gr.Dataframe(interactive=False, elem_id="library", wrap=True)
        # Files go to Gradio's upload route, open to signed-in admins only (bot.hardening); every
        # file type is let through so that a wrong one gets careloop's reason, not the browser's.
        upload = gr.UploadButton("Add documents (.md, .txt, .pdf)", file_count="multiple", type="filepath",
                                 variant="primary", elem_id="library-add")
        with gr.Row():
            document = gr.Dropdown([], label="Document", elem_id="library-select", scale=3)
            remove = gr.Button("Remove", variant="stop", size="sm", elem_id="library-remove", scale=1)
        removal = build_confirm_panel("library-confirm-panel", "library")

    def library_view() -> list[Any]:
        """The library's note, table and the documents to choose from."""
        listed = library.table()
        return [library.note(listed), listed, gr.Dropdown(choices=library.document_choices(), value=None)]

    def show_library(request: gr.Request) -> list[Any]:
        require(request, "admin")
        return ["", *library_view()]

    outputs = [message, note, table, document]
    tab.select(show_library, None, outputs, api_name="admin_library")

    def followed(shown: Any) -> list[Any]:
        """Nothing, unless a document was added or removed elsewhere (`careloop library`, another admin):
        then the note, the table and the documents to choose from (what is chosen is left alone)."""
        if set(shown_rows(shown, ["id", "title", "file"])) == library.listing():
            return [gr.skip()] * 3
        listed = library.table()
        return [library.note(listed), listed, gr.Dropdown(choices=library.document_choices())]

    def add_to_library(paths: list[str] | None, request: gr.Request) -> list[Any]:
        # The role first: a refused caller must not delete anything, not even an admin's upload it names
        # (issue 31, 9: a student's call with the cache path of an admin's upload deleted that file).
        viewer = require(request, "admin")
        try:
            added = library.add_documents(viewer, paths)
        except UserError as exc:  # the reasons stay on the page, one line per refused file
            added = str(exc)
        finally:
            discard_uploads(paths)
        return [added, *library_view(), None]

    upload.upload(add_to_library, [upload], [*outputs, upload], api_name="admin_library_add")
    removal.ask_on(remove, document, require, library.removal_confirmation)

    def remove_from_library(document_id: str | None, request: gr.Request) -> list[Any]:
        viewer = require(request, "admin")
        try:
            removed = library.remove_document(viewer, document_id)
        except UserError as exc:
            return refused(exc, 6)
        return [*removal.hidden(), removed, *library_view()]

    removal.confirm.click(remove_from_library, [removal.pending], [removal.pending, removal.panel, *outputs],
                          api_name="admin_library_remove")
    return AdminTab(tab, follow=Follow([note, table, document], followed, [table]))
