"""The ``careloop`` command: the groups' commands assembled, and how a failure is shown.

Each group lives in its own module; commands import their domain package lazily so ``--help``
stays fast and the command works for parts that are not installed.
"""

from __future__ import annotations

import sys

import typer

from careloop.settings import SettingsError, get_settings
from cli import adapters, database, library, models, seed, services, training, users
from cli.common import CommandError, err_console

app = typer.Typer(help="careloop: clinician-in-the-loop medical LLM platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(models.app, name="model")
app.add_typer(database.app, name="db")
app.add_typer(seed.app, name="seed")
app.add_typer(adapters.app, name="adapters")
app.add_typer(users.app, name="users")
app.add_typer(library.app, name="library")
for command in (services.doctor, services.serve, services.up, services.bot, services.worker, services.beat):
    app.command()(command)
app.command("export")(training.export)
app.command()(training.train)
app.command("runs")(training.runs)
app.command("eval")(training.evaluate)
app.command("leaderboard")(training.leaderboard)


@app.callback()
def _configure() -> None:
    from careloop.log import configure_logging
    from careloop.private import restrict_umask

    restrict_umask()  # every file a careloop command creates is its owner's alone (0600 / 0700)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


def main() -> None:
    from careloop.base_model import BaseModelUnavailable
    from careloop.seed import SeedDataError

    try:
        app()
    except SettingsError as exc:
        err_console.print(f"careloop: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except (CommandError, BaseModelUnavailable, SeedDataError) as exc:
        err_console.print(f"careloop: {exc}", markup=False, highlight=False)
        sys.exit(1)
    except OSError as exc:  # a full disk, a folder it may not write: the reason, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"careloop: {exc.strerror or exc}{where}", markup=False, highlight=False)
        sys.exit(1)
