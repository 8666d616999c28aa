"""Database engine, sessions and migrations (SQLAlchemy 2 + Alembic).

Every package declares its tables on :class:`Base`; the schema is only ever changed by
the Alembic migrations in ``careloop/migrations`` (``careloop db upgrade``). Times are stored as
timezone-aware UTC (``utcnow``); ``aware`` reads SQLite's naive ones back as UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from careloop.private import private_file

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Stable constraint names so migrations can drop/alter them on both SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """Now, timezone-aware UTC: the default of every timestamp column."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """``moment`` as UTC: SQLite hands back naive datetimes even for timezone-aware columns."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        private_file(Path(parsed.database))  # 0600 before SQLite opens it; its -wal and -shm follow
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001 - DB-API objects
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@lru_cache(maxsize=8)
def sessions_for(url: str) -> sessionmaker[Session]:
    """One engine and session factory per database URL in this process (workers, CLI commands)."""
    return session_factory(make_engine(url))


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


# Every module that declares tables. Named, not imported, so the shell does not depend on the
# domain packages at import time; Alembic needs them all to compare models with the schema.
MODEL_MODULES = ("careloop.audit", "careloop.accounts", "adapters.registry", "feedback.store", "trainer.runs",
                 "library.documents")


# Tables with no model: the library's passages in PostgreSQL (migration 0011) are written and read
# with their own SQL (``library.postgres``: COPY, a generated tsvector). Alembic leaves them out when
# it compares the models with the schema.
UNMODELLED_TABLES = frozenset({"library_passages", "library_terms", "library_loads"})


def modelled(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's ``include_name``: everything but ``UNMODELLED_TABLES``."""
    return type_ != "table" or name not in UNMODELLED_TABLES


def load_all_models() -> MetaData:
    """Import every module that declares tables so ``Base.metadata`` is complete (for autogenerate)."""
    import importlib

    for module in MODEL_MODULES:
        importlib.import_module(module)
    return Base.metadata
