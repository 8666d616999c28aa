"""Admins' documents: Markdown, text and PDF are added with their text, listed with their source,
found by search, removed, and every change audited; every kind of bad file is refused with a
one-line reason, and a batch with one bad file adds nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from support import BAD_FILES, LIMIT, medquad_sample, pdf_bytes

from careloop.audit import AuditEvent
from library.documents import DocumentRefused, add_documents, documents, remove_document


@pytest.fixture
def files(tmp_path):
    def write(name: str, content: bytes | str):
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


def test_markdown_text_and_pdf_are_added_with_their_text_and_audited(sessions, files):
    added = add_documents(sessions, [
        files("asthma.md", "# Asthma action plan\n\nUse the blue reliever inhaler when wheezing starts."),
        files("sepsis_notes.txt", "Sepsis needs antibiotics within the first hour."),
        files("handout.pdf", pdf_bytes("Warfarin interacts with vitamin K rich food.", title="Warfarin handout"))],
        actor="ad.min", max_bytes=LIMIT)
    assert [(d.title, d.kind, d.filename) for d in added] == [
        ("Asthma action plan", "markdown", "asthma.md"), ("sepsis notes", "text", "sepsis_notes.txt"),
        ("Warfarin handout", "pdf", "handout.pdf")]
    assert "Warfarin interacts with vitamin K" in added[2].text
    assert [d.id for d in documents(sessions)] == [d.id for d in added]
    removed = remove_document(sessions, added[1].id, actor="ad.min")
    assert removed.filename == "sepsis_notes.txt" and len(documents(sessions)) == 2
    with sessions() as session:
        events = [(e.actor, e.action, e.target, e.details.get("filename"))
                  for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert events == [("ad.min", "library.add", f"document {added[0].id}", "asthma.md"),
                      ("ad.min", "library.add", f"document {added[1].id}", "sepsis_notes.txt"),
                      ("ad.min", "library.add", f"document {added[2].id}", "handout.pdf"),
                      ("ad.min", "library.remove", f"document {added[1].id}", "sepsis_notes.txt")]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_refused_with_its_reason_and_nothing_of_its_batch_is_added(sessions, files, name):
    content, reason = BAD_FILES[name]
    good = files("good.md", "# Good notes\n\nHand washing prevents infection.")
    with pytest.raises(DocumentRefused) as refused:
        add_documents(sessions, [good, files(name, content)], actor="ad.min", max_bytes=LIMIT)
    assert str(refused.value).startswith(reason), str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    assert documents(sessions) == [], "nothing half-added: the good file of the batch is not added either"
    with sessions() as session:
        assert session.scalars(select(AuditEvent)).all() == []


def test_missing_files_and_duplicates_are_refused(sessions, files, tmp_path):
    notes = files("notes.md", "# Notes\n\nHand washing prevents infection.")
    (first,) = add_documents(sessions, [notes], actor="ad.min", max_bytes=LIMIT)
    copy = files("copy-of-notes.md", notes.read_bytes())
    other = files("other.md", "# Other\n\nMasks reduce droplet spread.")
    with pytest.raises(DocumentRefused) as refused:
        add_documents(sessions, [copy, other, files("other-again.md", other.read_bytes()), tmp_path / "gone.pdf"],
                      actor="ad.min", max_bytes=LIMIT)
    assert str(refused.value).splitlines() == [
        "gone.pdf: cannot be read (No such file or directory)",
        "other-again.md: is the same file as other.md",
        f"copy-of-notes.md: already in the library as document {first.id} (Notes, added by ad.min)"]
    assert [d.filename for d in documents(sessions)] == ["notes.md"]
    with pytest.raises(DocumentRefused, match="there is no document 999 in the library"):
        remove_document(sessions, 999, actor="ad.min")


@pytest.mark.parametrize(("database_url", "backend"), [("sqlite", "bm25s"), ("postgresql", "bm25s"),
                                                        ("postgresql", "postgresql")], indirect=["database_url"])
def test_the_search_finds_an_added_document_until_it_is_removed(database_url, backend, sessions, files,
                                                                 small_library_dir, tmp_path):
    from careloop.settings import load_settings
    from library.index import Retriever

    settings = load_settings(home=tmp_path / "home", database_url=database_url, retrieval_backend=backend,
                             library_data_dir=small_library_dir, library_index_dir=tmp_path / "index")
    # bm25s checks for admins' changes every refresh_seconds (here at once); PostgreSQL's store has
    # each change as it commits, whatever refresh_seconds says
    retriever = Retriever(settings, sessions, refresh_seconds=0 if backend == "bm25s" else 3600)
    question = "What does the ward protocol say about zolendronate infusions?"
    assert retriever.search(question) == []
    (added,) = add_documents(sessions, [files("ward-protocol.md", "# Ward protocol\n\nZolendronate infusions run "
                                              "over at least 15 minutes.")], actor="ad.min", max_bytes=LIMIT)
    (passage,) = retriever.search(question)
    assert (passage.doc_id, passage.title, passage.url) == (f"doc-{added.id}", "Ward protocol", "")
    assert passage.publisher == "added by ad.min (ward-protocol.md)"
    remove_document(sessions, added.id, actor="ad.min")
    assert retriever.search(question) == []
    if backend == "bm25s":
        assert len(list((tmp_path / "index").iterdir())) == 1, "older indexes are removed"


def test_an_index_that_cannot_be_saved_is_built_once_and_searched_from_memory(sessions, small_library_dir, tmp_path):
    """The index on disk is a cache: where it cannot be written (here its directory is a file; a
    read-only or full disk alike) the library is built once and searched from memory, not built
    again for every question."""
    from structlog.testing import capture_logs

    from careloop.settings import load_settings
    from library.index import Retriever

    (tmp_path / "index").write_text("not a directory")
    settings = load_settings(home=tmp_path / "home", library_data_dir=small_library_dir,
                             library_index_dir=tmp_path / "index", retrieval_backend="bm25s")
    retriever = Retriever(settings, sessions, refresh_seconds=0)
    page = medquad_sample(60, seed=1)[0]  # a page of the small library
    with capture_logs() as events:
        for _ in range(3):
            assert retriever.search(page["question"])[0].doc_id == page["id"]
    assert [e["event"] for e in events] == ["library_index_not_saved"], events


def test_a_pdf_whose_text_holds_nul_is_added_without_it_on_both_databases(sessions, files):
    """Issue 31, 1: text extracted from a PDF may hold NUL characters, which PostgreSQL refuses in text
    (the whole upload failed with a database error); they are dropped and the document is added."""
    (added,) = add_documents(sessions, [files("nul.pdf", pdf_bytes("Warfarin \x00interacts with vitamin K.",
                                                                 title="Warfarin\x00 handout"))],
                             actor="ad.min", max_bytes=LIMIT)
    assert "\x00" not in added.text and "Warfarin interacts with vitamin K" in added.text
    assert added.title == "Warfarin handout"
    assert [d.id for d in documents(sessions)] == [added.id]
