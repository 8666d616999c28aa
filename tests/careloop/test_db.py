"""Migrations up and down on SQLite and PostgreSQL, and the schema they build matches the models."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from careloop import audit, db


def test_migrations_upgrade_to_models_and_downgrade_to_empty(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_name": db.modelled})
            drift = compare_metadata(context, db.load_all_models())
        assert drift == [], f"migrations and models disagree: {drift}"
        tables = set(sa.inspect(engine).get_table_names())
        assert set(db.Base.metadata.tables) <= tables

        db.downgrade(database_url, "base")
        assert db.current_revision(engine) is None
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}

        db.upgrade(database_url)  # and back up again: downgrades leave nothing behind
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()
        db.downgrade(database_url, "base")


def test_sessions_commit_together_or_not_at_all(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    factory = db.session_factory(engine)
    try:
        with db.transaction(factory) as session:
            audit.record(session, "admin", "promote", "med-v0001", reason="gate passed")
        with pytest.raises(RuntimeError), db.transaction(factory) as session:
            audit.record(session, "admin", "rollback", "med-v0001")
            raise RuntimeError("crash before commit")
        with factory() as session:
            events = audit.recent(session)
        assert [(e.action, e.target, e.details) for e in events] == [
            ("promote", "med-v0001", {"reason": "gate passed"})
        ]
    finally:
        engine.dispose()
        db.downgrade(database_url, "base")


def test_sqlite_files_use_wal(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_cli_upgrade_current_downgrade(cli):
    assert cli("db", "upgrade").returncode == 0
    current = cli("db", "current")
    assert f"database: {db.head_revision()}" in current.stdout
    assert cli("db", "downgrade", "base").returncode == 0
    assert "database: empty" in cli("db", "current").stdout
