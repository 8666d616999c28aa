"""The whole shipped library searchable by each backend: the bm25s index built once and cached
across runs in pytest's cache directory like the tiny model, and the PostgreSQL store loaded once
per session (a small library for what needs a fresh index each time is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock
from support import LIBRARY_DIR


@pytest.fixture(scope="session")
def medquad_library(request):
    """The shipped MedQuAD library's index, built once (about 10 s) and cached across runs."""
    from library.corpus import medquad_chunks
    from library.index import Library, library_key

    out = Path(request.config.cache.mkdir("careloop")) / f"library-{library_key(LIBRARY_DIR, 'medquad-only')}"
    with FileLock(f"{out}.lock"):
        if not (out / "chunks.jsonl").is_file():
            library = Library.build(medquad_chunks(LIBRARY_DIR))
            out.mkdir(parents=True, exist_ok=True)
            library.save(out)
            return library
    return Library.load(out)


@pytest.fixture(scope="session")
def medquad_store(postgres_databases, tmp_path_factory):
    """The shipped MedQuAD library loaded into a PostgreSQL database of its own, once per session."""
    from careloop import db
    from careloop.settings import load_settings
    from library.index import open_store

    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    settings = load_settings(home=tmp_path_factory.mktemp("store"), database_url=url, library_data_dir=LIBRARY_DIR)
    yield open_store(settings, db.session_factory(engine))
    engine.dispose()


@pytest.fixture(params=["bm25s", "postgresql"])
def searched_library(request):
    """The shipped library as each search backend holds it: ``search(question, k, min_score)``."""
    return request.getfixturevalue({"bm25s": "medquad_library", "postgresql": "medquad_store"}[request.param])
