"""`careloop seed`: the seed corpus in data/seed."""

from __future__ import annotations

import typer

from careloop.settings import get_settings
from cli.common import console

app = typer.Typer(help="The seed corpus in data/seed.", no_args_is_help=True)


@app.command("validate")
def seed_validate() -> None:
    """Validate every seed file record by record; bad lines are reported by number."""
    from careloop.seed import validate_all

    settings = get_settings()
    for name, count in validate_all(settings.seed_data_dir).items():
        console.print(f"{name}: {count} records")
