"""Issue 31, 6: a long question over many admins' passages. A search uses the question's
CARELOOP_RETRIEVAL_MAX_QUERY_TERMS rarest words, whatever its length (a 4,000-character question
took 10 s of PostgreSQL's CPU with every word used), and still finds what a normal question asks
for; PostgreSQL's term counts include admins' passages, counted as documents come and go, not per
question; and on PostgreSQL a library change builds no bm25s index (it was rebuilt after each)."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from support import ACCOUNTS, medquad_sample

from careloop import db
from careloop.settings import Settings, load_settings
from library.documents import add_documents, documents, remove_document
from library.index import Retriever

DEFAULTS = Settings()
ADMIN_PASSAGES = 3000  # synthetic, beside the ward protocol's
WARD = "# Ward protocol\n\nZolendronate infusions run over at least 15 minutes, with the patient well hydrated."
WARD_QUESTION = "What does the ward protocol say about zolendronate infusions?"


def vocabulary() -> list[str]:
    """Words of the shipped pages, as often as they occur there."""
    return [word for page in medquad_sample(300, seed=3) for word in page["text"].lower().split() if word.isalpha()]


def long_question(chars: int = 4000, seed: int = 1) -> str:
    words, rng = vocabulary(), random.Random(seed)
    question = ""
    while len(question) < chars:
        question += rng.choice(words) + " "
    return question[:chars]


@pytest.fixture(scope="module")
def crowded(postgres_databases, tmp_path_factory):
    """A PostgreSQL database whose library holds 60 shipped pages, the ward protocol and
    ADMIN_PASSAGES passages of admins' documents of random words; its (url, data dir, home)."""
    import gzip
    import json

    home = tmp_path_factory.mktemp("crowded")
    data = home / "library-data"
    data.mkdir()
    with gzip.open(data / "medquad.jsonl.gz", "wt", encoding="utf-8") as out:
        for record in medquad_sample(60, seed=1):
            out.write(json.dumps(record) + "\n")
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    Retriever(load_settings(home=home, database_url=url, library_data_dir=data), sessions).library()  # loaded first
    words, rng = vocabulary(), random.Random(0)
    paths = [home / "ward.md"]
    paths[0].write_text(WARD)
    per_file = 500
    for n in range(ADMIN_PASSAGES // per_file):
        lines = [" ".join(rng.choice(words) for _ in range(80))[:560].rsplit(" ", 1)[0] + "." for _ in range(per_file)]
        paths.append(home / f"notes-{n}.md")
        paths[-1].write_text(f"# Course notes {n}\n\n" + "\n\n".join(lines))
    add_documents(sessions, paths, actor="ad.min", max_bytes=2**20)
    with engine.connect() as connection:
        admins = connection.exec_driver_sql("SELECT count(*) FROM library_passages WHERE document_id IS NOT NULL")
        assert admins.scalar() > ADMIN_PASSAGES
    engine.dispose()
    return url, data, home


def library_for(backend: str, crowded, index_dir):
    url, data, home = crowded
    settings = load_settings(home=home, database_url=url, library_data_dir=data, retrieval_backend=backend,
                             library_index_dir=index_dir)
    engine = db.make_engine(url)
    return engine, Retriever(settings, db.session_factory(engine)).library()


@pytest.mark.parametrize("backend", ["bm25s", "postgresql"])
def test_a_long_question_is_searched_for_its_rarest_words_and_a_normal_one_still_finds_its_passage(
        backend, crowded, tmp_path, monkeypatch):
    engine, library = library_for(backend, crowded, tmp_path / "index")
    sent: list[list[str]] = []  # the words each search asked its backend about
    if backend == "bm25s":
        retrieve = library.retriever.retrieve

        def recorded(queries, *args, **kwargs):
            sent.append(list(queries[0]))
            return retrieve(queries, *args, **kwargs)

        monkeypatch.setattr(library.retriever, "retrieve", recorded)
    else:
        def recorded(conn, cursor, statement, parameters, context, executemany):
            if "ts_rank" in statement:  # the ranking: each word's tsquery with its IDF
                sent.append(list(parameters["queries"]))
                assert len(parameters["viable"].split(" | ")) <= len(parameters["queries"])

        sa.event.listen(engine, "before_cursor_execute", recorded)
    try:
        question = long_question()
        assert len(question) == 4000 and len(set(question.split())) > 4 * DEFAULTS.retrieval_max_query_terms
        library.search(question, DEFAULTS.retrieval_top_k, 0.0)  # no threshold: it asks its backend for the most
        assert sent, "the long question was searched"
        assert 0 < len(set(sent[-1])) <= DEFAULTS.retrieval_max_query_terms, len(set(sent[-1]))
        used = library.query_terms(question)
        assert len(used) == DEFAULTS.retrieval_max_query_terms
        everything = library.query_terms(question, 0)
        assert len(everything) > 2 * len(used) and set(used) <= set(everything)
        assert {term.strip("'") for term in sent[-1]} <= set(used), "the words sent are the rarest ones"

        (found, *_) = library.search(WARD_QUESTION, DEFAULTS.retrieval_top_k, DEFAULTS.retrieval_min_score)
        assert found.title == "Ward protocol"
        page = medquad_sample(60, seed=1)[0]
        assert page["id"] in [p.doc_id for p in library.search(page["question"], 5, DEFAULTS.retrieval_min_score)]
    finally:
        engine.dispose()


def test_the_rarest_words_of_a_long_question_are_the_ones_used(crowded, tmp_path):
    """A long question that holds a passage's rare words among common ones is searched for those."""
    engine, store = library_for("postgresql", crowded, tmp_path / "index")
    try:
        padded = ("the patient and the doctor said that it is a disease of the body " * 40)[:3000]
        question = f"{padded} zolendronate infusions hydrated {padded}"
        used = store.query_terms(question, 5)
        assert {"zolendron", "infus", "hydrat"} <= set(used), used
        assert store.search(question, 3, 0.0, max_terms=5)[0].title == "Ward protocol"
    finally:
        engine.dispose()


def test_term_counts_include_admins_passages_as_documents_come_and_go(crowded, tmp_path):
    """What a search reads instead of counting admins' passages for each of its words (issue 31, 6)."""
    url, data, home = crowded
    recount = """SELECT word.lexeme, count(*) FROM library_passages AS p, unnest(p.search) AS word
                 GROUP BY word.lexeme"""
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)

    def counts() -> tuple[dict[str, int], dict[str, int], int, int]:
        with engine.connect() as connection:
            return (dict(connection.exec_driver_sql("SELECT lexeme, passages FROM library_terms").all()),
                    dict(connection.exec_driver_sql(recount).all()),
                    connection.exec_driver_sql("SELECT all_passages FROM library_loads").scalar(),
                    connection.exec_driver_sql("SELECT count(*) FROM library_passages").scalar())

    try:
        kept, actual, total, passages = counts()
        assert kept == actual and total == passages
        assert kept["zolendron"] == 1, "the ward protocol's word is counted"
        notes = tmp_path / "sepsis.md"
        notes.write_text("# Sepsis bundle\n\nGive antibiotics within the hour.\n\n" + "Quinupristin dosing. " * 60)
        (added,) = add_documents(sessions, [notes], actor="ad.min", max_bytes=2**20)
        kept, actual, total, passages = counts()
        assert kept == actual and total == passages
        assert kept["quinupristin"] == added.passages > 1
        remove_document(sessions, added.id, actor="ad.min")
        kept, actual, total, passages = counts()
        assert kept == actual and total == passages and "quinupristin" not in kept
    finally:
        engine.dispose()


def test_a_library_change_on_postgresql_builds_no_bm25s_index(postgres_databases, small_library_dir, tmp_path):
    """The admin page's Library tab adds and removes a document as an admin does; on PostgreSQL the
    change is searchable as it commits and no bm25s index is built (3.5 to 6 s of CPU per change
    before), on SQLite the index is built as it was."""
    from adapters.registry import Registry
    from bot.access import Viewer
    from bot.admin.library import Library
    from bot.admin.shared import AdminServices
    from serving.client import ServingClient

    notes = tmp_path / "ward.md"
    notes.write_text(WARD)
    admin = Viewer("ad.min", ACCOUNTS["ad.min"])
    for url, index in ((postgres_databases(), tmp_path / "pg-index"), (f"sqlite:///{tmp_path / 'c.db'}",
                                                                       tmp_path / "sqlite-index")):
        db.upgrade(url)
        engine = db.make_engine(url)
        sessions = db.session_factory(engine)
        settings = load_settings(home=tmp_path, database_url=url, library_data_dir=small_library_dir,
                                 library_index_dir=index)
        tab = Library(AdminServices(settings, sessions, Registry(sessions, settings.base_model),
                                    ServingClient(settings.serving_url)))
        try:
            added = tab.add_documents(admin, [notes])
            assert "The search index is ready" in added
            assert Retriever(settings, sessions).search(WARD_QUESTION)[0].title == "Ward protocol"
            removed = tab.remove_document(admin, str(documents(sessions)[0].id))
            assert "The search index is ready" in removed
            assert Retriever(settings, sessions).search(WARD_QUESTION) == []
            built = sorted(path.name for path in index.rglob("*")) if index.exists() else []
            if settings.resolved_retrieval_backend == "postgresql":
                assert built == [], f"a bm25s index was built on PostgreSQL: {built}"
            else:
                assert "chunks.jsonl" in built
        finally:
            engine.dispose()
