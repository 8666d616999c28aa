"""Admins' documents: Markdown, text and PDF are added with their text, listed with their source,
found by search, removed, and every change audited; every kind of bad file is refused with a
one-line reason, and a batch with one bad file adds nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from careloop.audit import AuditEvent
from library.documents import DocumentRefused, add_documents, documents, remove_document

LIMIT = 64 * 1024


def pdf_bytes(text: str | None, title: str = "") -> bytes:
    """A real one-page PDF (fonts, content stream and cross-reference table), with ``text`` on it or no text."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
    info = f"<< /Title ({title}) >>".encode() if title else b"<< >>"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                b"/Resources << /Font << /F1 5 0 R >> >> >>"),
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>", info]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


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


BAD_FILES = {
    "slides.docx": (b"PK\x03\x04 a Word file", "slides.docx: not a Markdown, plain-text or PDF file"),
    "binary.txt": (b"text\x00\x01\x02 with binary data", "binary.txt: is not text (it holds binary data)"),
    "latin1.md": ("Fièvre et céphalée".encode("latin-1"), "latin1.md: is not text (not UTF-8)"),
    "broken.pdf": (b"%PDF-1.4\nthis is not really a PDF", "broken.pdf: is not a readable PDF"),
    "scanned.pdf": (pdf_bytes(None), "scanned.pdf: has no text to index (a scanned PDF needs OCR first)"),
    "empty.md": (b"   \n\n", "empty.md: has no text to index"),
    "huge.txt": (b"fever " * (LIMIT // 6 + 10),
                 "huge.txt: 0.1 MiB is over the 0.1 MiB limit (CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES)"),
}


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
