"""`careloop users`: accounts and roles; every change is audited with the actor."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from cli.common import ActorOption, CommandError, actor_name, console, database_sessions

app = typer.Typer(help="Accounts and roles (student, nurse, physician, admin).", no_args_is_help=True)


@contextmanager
def _account_errors() -> Iterator[None]:
    from careloop.accounts import AccountError

    try:
        yield
    except AccountError as exc:
        raise CommandError(str(exc)) from None


PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin instead of "
                                             "generating one (it is never a command-line argument).")]


def _shown(password: str, generated: bool) -> str:
    return (f"; temporary password: {password} (shown once; it must be replaced at the first sign-in)"
            if generated else "")


def _password(from_stdin: bool) -> tuple[str, bool]:
    from careloop.accounts import new_password

    if from_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    return new_password(), True


@app.command("add")
def users_add(
    username: Annotated[str, typer.Argument()],
    role: Annotated[str, typer.Option(help="student, nurse, physician or admin.")],
    password_stdin: PasswordStdin = False,
    actor: ActorOption = None,
) -> None:
    """Create an account; without --password-stdin a temporary password is generated and printed once
    (its owner chooses their own at the first sign-in)."""
    from careloop.accounts import add_user

    password, generated = _password(password_stdin)
    with _account_errors():
        user = add_user(database_sessions(), username, role, password, actor=actor_name(actor), temporary=generated)
    console.print(f"{user.username}: added as {role}" + _shown(password, generated), markup=False)


@app.command("list")
def users_list() -> None:
    """Every account with its role, whether it is disabled and whether its password is temporary."""
    from careloop.accounts import users

    table = Table(title="accounts")
    for column in ("username", "role", "disabled", "password", "created"):
        table.add_column(column)
    for user in users(database_sessions()):
        table.add_row(user.username, user.role, "yes" if user.disabled else "no",
                      "temporary" if user.must_change_password else "own", f"{user.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@app.command("set-role")
def users_set_role(username: Annotated[str, typer.Argument()], role: Annotated[str, typer.Argument()],
                   actor: ActorOption = None) -> None:
    """Change an account's role (audited)."""
    from careloop.accounts import set_role

    with _account_errors():
        set_role(database_sessions(), username, role, actor=actor_name(actor))
    console.print(f"{username}: role {role}")


@app.command("disable")
def users_disable(username: Annotated[str, typer.Argument()],
                  enable: Annotated[bool, typer.Option("--enable", help="Enable it again instead.")] = False,
                  actor: ActorOption = None) -> None:
    """Disable an account (it can no longer log in); --enable reverses it."""
    from careloop.accounts import set_disabled

    with _account_errors():
        set_disabled(database_sessions(), username, not enable, actor=actor_name(actor))
    console.print(f"{username}: {'enabled' if enable else 'disabled'}")


@app.command("set-password")
def users_set_password(username: Annotated[str, typer.Argument()], password_stdin: PasswordStdin = False,
                       actor: ActorOption = None) -> None:
    """Set a new password (from stdin, or a temporary one generated and printed once)."""
    from careloop.accounts import set_password

    password, generated = _password(password_stdin)
    with _account_errors():
        set_password(database_sessions(), username, password, actor=actor_name(actor), temporary=generated)
    console.print(f"{username}: password changed" + _shown(password, generated), markup=False)
