"""`careloop db`: schema migrations (Alembic)."""

from __future__ import annotations

from typing import Annotated

import typer

from careloop.settings import get_settings
from cli.common import console

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from careloop.db import upgrade

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at revision {revision}")


@app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, or 'base' for empty.")]) -> None:
    """Revert migrations down to REVISION."""
    from careloop.db import downgrade

    downgrade(get_settings().resolved_database_url, revision)
    console.print(f"database at revision {revision}")


@app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the one the code expects."""
    from careloop.db import current_revision, head_revision, make_engine

    engine = make_engine(get_settings().resolved_database_url)
    try:
        console.print(f"database: {current_revision(engine) or 'empty'}; code: {head_revision()}")
    finally:
        engine.dispose()
