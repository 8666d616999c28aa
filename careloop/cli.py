"""The ``careloop`` command. Commands import their domain package lazily so ``--help`` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from careloop.settings import SettingsError, get_settings

app = typer.Typer(help="careloop: clinician-in-the-loop medical LLM platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
model_app = typer.Typer(help="Base models: build the offline demo model.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
seed_app = typer.Typer(help="The seed corpus in data/seed.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")
app.add_typer(seed_app, name="seed")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class CommandError(Exception):
    """A user-facing failure: printed as one message, exit code 1."""


@app.callback()
def _configure() -> None:
    from careloop.log import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@app.command()
def doctor() -> None:
    """Show what is configured and reachable; exit 1 if a required part is missing."""
    from careloop.doctor import run_checks

    checks = run_checks(get_settings())
    table = Table(title="careloop doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        status = "ok" if check.ok else ("FAIL" if check.required else "warn")
        table.add_row(check.name, status, check.detail)
    console.print(table)
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        raise CommandError("required check(s) failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: CARELOOP_SERVING_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: CARELOOP_SERVING_PORT].")] = None,
) -> None:
    """Run the embedded engine behind the OpenAI/TGI-compatible HTTP API."""
    from serving.server import ExternalBackend
    from serving.server import main as serve_main

    overrides = {k: v for k, v in {"serving_host": host, "serving_port": port}.items() if v is not None}
    try:
        serve_main(get_settings().model_copy(update=overrides))
    except ExternalBackend as exc:
        raise CommandError(str(exc)) from None


@model_app.command("build-demo")
def build_demo(
    size: Annotated[Literal["tiny", "demo"] | None, typer.Option(help="tiny (~1M params, tests) or demo (~10M, default).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory [default: $CARELOOP_HOME/models/careloop-demo[-tiny]].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [default: CARELOOP_SEED].")] = None,
) -> None:
    """Build the offline demo model (tokenizer + small Llama pretrained on the seed corpus); cached."""
    from careloop.base_model import demo_model_dir
    from careloop.demo_model import build_demo_model

    settings = get_settings()
    size = size or settings.demo_size
    out = out or demo_model_dir(settings, size)
    result = build_demo_model(out, size=size, seed=settings.seed if seed is None else seed,
                              seed_dir=settings.seed_data_dir, log=console.print)
    state = "cached build reused" if result.cached else f"built in {result.seconds:.0f} s"
    console.print(
        f"DEMO model ({size}, {result.parameters / 1e6:.2f}M params) at {result.path}: {state}; "
        f"held-out perplexity {result.perplexity_before:.1f} -> {result.perplexity_after:.1f}"
    )


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from careloop.db import upgrade

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    console.print(f"database at revision {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, or 'base' for empty.")]) -> None:
    """Revert migrations down to REVISION."""
    from careloop.db import downgrade

    downgrade(get_settings().resolved_database_url, revision)
    console.print(f"database at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the one the code expects."""
    from careloop.db import current_revision, head_revision, make_engine

    engine = make_engine(get_settings().resolved_database_url)
    try:
        console.print(f"database: {current_revision(engine) or 'empty'}; code: {head_revision()}")
    finally:
        engine.dispose()


@seed_app.command("validate")
def seed_validate() -> None:
    """Validate every seed file record by record; bad lines are reported by number."""
    from careloop.seed import validate_all

    settings = get_settings()
    for name, count in validate_all(settings.seed_data_dir).items():
        console.print(f"{name}: {count} records")


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
