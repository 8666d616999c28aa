"""What the command groups share: the consoles, the one user-facing error, the ``--actor`` option,
and turning a domain's refusal into that error."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from careloop.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ActorOption = Annotated[str | None, typer.Option(help="Who does this, for the audit log [default: cli:$USER].")]


class CommandError(Exception):
    """A user-facing failure: printed as one message, exit code 1."""


def actor_name(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


def database_sessions() -> sessionmaker[Session]:
    """The configured database, refused in one line when its schema is not the one this code needs
    (a fresh data directory before `careloop db upgrade`, or a database migrated by another version)."""
    from sqlalchemy.exc import SQLAlchemyError

    from careloop.db import current_revision, head_revision, sessions_for
    from careloop.settings import redacted

    url = get_settings().resolved_database_url
    sessions = sessions_for(url)
    try:
        current = current_revision(sessions.kw["bind"])
    except SQLAlchemyError as exc:
        raise CommandError(f"cannot open the database at {redacted(url)}: "
                           f"{str(exc.orig or exc).splitlines()[0]}") from None
    if current is None:
        raise CommandError(f"the database at {redacted(url)} has no tables yet: run `careloop db upgrade`")
    if current != head_revision():
        raise CommandError(f"the database at {redacted(url)} is at schema revision {current}, this careloop "
                           f"needs {head_revision()}: run `careloop db upgrade`")
    return sessions


@contextmanager
def serving_errors() -> Iterator[None]:
    """A registry refusal or a serving failure, as one line instead of a traceback."""
    from adapters.registry import RegistryError
    from serving.client import ControlUnsupported, ServingRejected, ServingUnavailable

    try:
        yield
    except (RegistryError, ServingUnavailable, ServingRejected, ControlUnsupported) as exc:
        raise CommandError(str(exc)) from None
