"""Admins' documents: Markdown, text and PDF are added with their text, listed with their source,
found by search, removed, and every change audited; every kind of bad file is refused with a
one-line reason, and a batch with one bad file adds nothing."""

from __future__ import annotations

import dataclasses
import tracemalloc
import zlib

import pytest
from sqlalchemy import select
from support import BAD_FILES, LIMIT, medquad_sample, pdf_bytes, pdf_file

from careloop.audit import AuditEvent
from library.documents import DocumentLimits, DocumentRefused, add_documents, documents, remove_document


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


# ----- issue 31, 5: PDF bombs and documents too big to index -----

def pdf_pages(pages: int, stream: bytes, compress: bool = True) -> bytes:
    """A PDF of ``pages`` pages that all show one content stream (Flate-compressed unless told)."""
    body = zlib.compress(stream, 9) if compress else stream
    kids = b" ".join(b"%d 0 R" % (5 + page) for page in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
               b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(body), b" /Filter /FlateDecode" * compress, body),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
                b"/Resources << /Font << /F1 4 0 R >> >> >>"] * pages
    return pdf_file(objects)


def text_stream(line: str, lines: int) -> bytes:
    """A content stream showing ``line`` ``lines`` times, one below the other."""
    return b"BT /F1 12 Tf 14 TL 72 720 Td " + b"(%s) Tj T* " % line.encode() * lines + b"ET"


def limits(**changed) -> DocumentLimits:
    return dataclasses.replace(DocumentLimits.of(), **changed)


def refusal(sessions, paths, max_bytes=LIMIT, **changed) -> list[str]:
    """The reasons ``add_documents`` gives for refusing ``paths``, checking that nothing was added or audited."""
    before = [d.id for d in documents(sessions)]
    with pytest.raises(DocumentRefused) as refused:
        add_documents(sessions, paths, actor="ad.min", max_bytes=max_bytes, limits=limits(**changed))
    assert [d.id for d in documents(sessions)] == before, "nothing of a refused batch is added"
    with sessions() as session:
        assert len(session.scalars(select(AuditEvent)).all()) == len(before)
    return str(refused.value).splitlines()


def test_a_pdf_bomb_is_refused_at_its_text_limit_and_read_outside_the_bot_process(sessions, files):
    """Issue 31, 5: only the file size was capped: 3.8 KB of PDF (10 pages sharing one 1 MB Flate
    stream) became 10 M characters and 16,810 passages, read in the bot's own process. Now a child
    process reads it and stops at the first character over CARELOOP_LIBRARY_MAX_DOCUMENT_CHARS; the
    parent allocates next to nothing (traced: the old code's peak was hundreds of MB)."""
    bomb = files("bomb.pdf", pdf_pages(10, text_stream("Fever and cough on the ward.", 27_000)))  # 1 MB a page
    assert bomb.stat().st_size < 8 * 1024
    good = files("good.md", "# Good notes\n\nHand washing prevents infection.")
    tracemalloc.start()
    try:
        reasons = refusal(sessions, [good, bomb], max_chars=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reasons == ["bomb.pdf: its text is over 100,000 characters (CARELOOP_LIBRARY_MAX_DOCUMENT_CHARS)"]
    assert peak < 4 * 2**20, f"the parent process allocated {peak / 2**20:.1f} MiB reading a bomb"
    # an honest PDF of several pages under the same limits still goes in
    handout = files("handout.pdf", pdf_pages(3, text_stream("Warfarin interacts with vitamin K.", 100)))
    (added,) = add_documents(sessions, [handout], actor="ad.min", max_bytes=LIMIT, limits=limits(max_chars=100_000))
    assert added.text.count("Warfarin interacts with vitamin K.") == 300 and added.passages > 10


def test_a_pdf_nested_too_deeply_is_refused_with_a_reason_not_a_recursion_error(sessions, files):
    """Issue 31, 5: nested arrays in a content stream raised an uncaught RecursionError (a blank error
    on the Admin page, a traceback from `careloop library add`)."""
    nested = files("nested.pdf", pdf_bytes("Ward notes) Tj " + "[" * 5000 + "]" * 5000 + " (end"))
    assert refusal(sessions, [nested]) == ["nested.pdf: its content is nested too deeply to read"]


def test_pdfs_over_the_page_memory_or_time_limits_are_refused_with_their_reasons(sessions, files):
    """Issue 31, 5: a PDF's pages, and the memory and time its reading takes, were not limited (a
    170 KB file took 942 MB); the child reading it is limited in each, and killed at the time limit."""
    pages = files("pages.pdf", pdf_pages(3, text_stream("Sepsis bundle.", 10)))
    assert refusal(sessions, [pages], max_pdf_pages=2) == [
        "pages.pdf: has 3 pages, over the limit of 2 (CARELOOP_LIBRARY_MAX_PDF_PAGES)"]
    # 70 MB of blanks in 70 KB: more than 100 MiB of address space to decompress
    blanks = files("blanks.pdf", pdf_pages(1, b"BT /F1 12 Tf 72 720 Td (Fever) Tj ET" + b" " * (70 * 2**20)))
    assert refusal(sessions, [blanks], max_bytes=2**20, pdf_memory_bytes=100 * 2**20) == [
        "blanks.pdf: needs more than 100 MiB of memory to read (CARELOOP_LIBRARY_PDF_MEMORY_BYTES)"]
    slow = files("slow.pdf", pdf_bytes("Warfarin interacts with vitamin K."))
    assert refusal(sessions, [slow], pdf_timeout_seconds=0.01) == [
        "slow.pdf: could not be read within 0.01 s (CARELOOP_LIBRARY_PDF_TIMEOUT_SECONDS)"]


def test_a_text_file_over_the_character_limit_is_refused(sessions, files):
    """Issue 31, 5: a Markdown or text file under the size limit could still hold more text than a
    document may (the character limit is for every kind, not PDFs alone)."""
    notes = files("long-notes.md", "# Long notes\n\n" + "Hand washing prevents infection. " * 100)
    assert refusal(sessions, [notes], max_chars=2000) == [
        "long-notes.md: its text is over 2,000 characters (CARELOOP_LIBRARY_MAX_DOCUMENT_CHARS)"]


def test_a_document_that_would_take_the_library_over_its_passage_limit_is_refused(sessions, files):
    """Issue 31, 5: the library's size was not limited (one upload grew it 44%); the passages of the
    admins' documents together are capped by CARELOOP_LIBRARY_MAX_PASSAGES."""
    paragraphs = "\n\n".join(f"Paragraph {n}: " + "hand washing prevents infection " * 15 for n in range(10))
    (first,) = add_documents(sessions, [files("first.md", "# First\n\n" + paragraphs)], actor="ad.min",
                             max_bytes=LIMIT, limits=limits(max_passages=25))
    assert first.passages == 10
    small = files("small.md", "# Small\n\nMasks reduce droplet spread.")
    second = files("second.md", "# Second\n\n" + paragraphs.replace("hand washing", "gloving"))
    assert refusal(sessions, [small, second], max_passages=20) == [
        "second.md: its 10 passages would take the library's added documents to 21, over the limit of 20 passages "
        "(CARELOOP_LIBRARY_MAX_PASSAGES)"]
    assert [d.filename for d in add_documents(sessions, [small, second], actor="ad.min", max_bytes=LIMIT,
                                              limits=limits(max_passages=21))] == ["small.md", "second.md"]
