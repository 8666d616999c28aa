"""Alembic environment: runs migrations against the URL set by ``careloop.db.alembic_config``."""

from alembic import context

from careloop.db import load_all_models, make_engine, modelled

config = context.config
target_metadata = load_all_models()


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, render_as_batch=True, include_name=modelled)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            # render_as_batch lets ALTERs work on SQLite (copy-and-move) as on PostgreSQL.
            context.configure(
                connection=connection, target_metadata=target_metadata, render_as_batch=True,
                include_name=modelled,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations()
