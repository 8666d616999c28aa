"""The library in PostgreSQL (``CARELOOP_RETRIEVAL_BACKEND=postgresql``): loaded once however many
processes start together, loaded again (admins' documents included) when the shipped library
changes, and nothing of it on SQLite. Its search quality is in test_retrieval.py, admins' documents
found and gone in test_documents.py."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time

import sqlalchemy as sa
from support import medquad_sample

from careloop import db
from careloop.settings import load_settings
from library import postgres
from library.corpus import chunk_text, medquad_chunks
from library.documents import add_documents
from library.index import open_store

OPEN_STORE = """
import sys
from pathlib import Path
from careloop import db
from careloop.settings import load_settings
from library.index import open_store
settings = load_settings(home=Path(sys.argv[3]), database_url=sys.argv[1], library_data_dir=Path(sys.argv[2]))
print("passages", len(open_store(settings, db.sessions_for(sys.argv[1]))))
"""


def counts(engine: sa.Engine) -> tuple[int, list[str]]:
    with engine.connect() as connection:
        return (connection.exec_driver_sql("SELECT count(*) FROM library_passages").scalar(),
                list(connection.exec_driver_sql("SELECT key FROM library_loads").scalars()))


def test_processes_starting_together_load_the_library_once(postgres_databases, small_library_dir, tmp_path):
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as holder:  # holds the load's lock, so both processes come to it before either loads
            holder.execute(sa.text("SELECT pg_advisory_lock(:lock)"), {"lock": postgres.LOAD_LOCK})
            starting = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, url, str(small_library_dir),
                                          str(tmp_path / f"home{n}")], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True) for n in range(2)]
            deadline = time.monotonic() + 60
            waiting = 0
            while waiting < 2 and time.monotonic() < deadline and all(p.poll() is None for p in starting):
                time.sleep(0.1)
                waiting = holder.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())").scalar()
            holder.execute(sa.text("SELECT pg_advisory_unlock(:lock)"), {"lock": postgres.LOAD_LOCK})
        outputs = [p.communicate(timeout=120)[0] for p in starting]
        assert waiting == 2, f"both processes should have waited for the lock: {outputs}"
        assert [p.returncode for p in starting] == [0, 0], outputs
        expected = len(medquad_chunks(small_library_dir))
        assert [line for out in outputs for line in out.splitlines() if line.startswith("passages")] == [
            f"passages {expected}"] * 2
        assert sum("library_store_loaded" in out for out in outputs) == 1, outputs
        assert counts(engine) == (expected, [postgres.store_key(small_library_dir)]), "loaded once, not twice"
    finally:
        engine.dispose()


def test_a_new_shipped_library_replaces_the_old_one_and_keeps_admins_documents(postgres_databases,
                                                                               small_library_dir, tmp_path):
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    try:
        notes = tmp_path / "ward.md"
        notes.write_text("# Ward protocol\n\nZolendronate infusions run over at least 15 minutes.")
        add_documents(sessions, [notes], actor="ad.min", max_bytes=65536)  # before the store was ever loaded
        store = open_store(load_settings(home=tmp_path, database_url=url, library_data_dir=small_library_dir),
                           sessions)
        expected = len(medquad_chunks(small_library_dir)) + len(chunk_text(notes.read_text()))
        assert counts(engine) == (expected, [postgres.store_key(small_library_dir)]), "the document once"
        old_page = medquad_sample(60, seed=1)[0]
        assert store.search(old_page["question"], 3, 0.7)[0].doc_id == old_page["id"]

        newer = tmp_path / "newer-library"  # the next release's data: other pages
        newer.mkdir()
        with gzip.open(newer / "medquad.jsonl.gz", "wt", encoding="utf-8") as out:
            for record in medquad_sample(40, seed=2):
                out.write(json.dumps(record) + "\n")
        store = open_store(load_settings(home=tmp_path, database_url=url, library_data_dir=newer), sessions)
        expected = len(medquad_chunks(newer)) + len(chunk_text(notes.read_text()))
        assert counts(engine) == (expected, [postgres.store_key(newer)])
        assert old_page["id"] not in [p.doc_id for p in store.search(old_page["question"], 3, 0.7)]
        (found,) = store.search("What does the ward protocol say about zolendronate infusions?", 3, 0.7)
        assert found.title == "Ward protocol"
    finally:
        engine.dispose()


def test_sqlite_has_no_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        assert not set(sa.inspect(engine).get_table_names()) & db.UNMODELLED_TABLES
    finally:
        engine.dispose()
