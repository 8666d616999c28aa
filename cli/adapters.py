"""`careloop adapters`: LoRA adapter versions; promotion and rollback go through ``adapters.rollout``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from careloop.settings import get_settings
from cli.common import ActorOption, actor_name, console, database_sessions, serving_errors

app = typer.Typer(help="LoRA adapter versions: register, load, promote, roll back, retire.", no_args_is_help=True)


def _registry_and_client():
    from adapters.registry import open_registry
    from serving.client import ServingClient

    settings = get_settings()
    database_sessions()  # a missing schema in one line
    return open_registry(settings), ServingClient.from_settings(settings)


@app.command("list")
def adapters_list() -> None:
    """Every adapter version with its status; `loaded` says whether serving (every replica) has it in memory."""
    registry, client = _registry_and_client()
    with serving_errors():
        versions = registry.versions()
    try:
        loaded = client.loaded_everywhere()
    except Exception:  # noqa: BLE001 - the list is still useful with serving down
        loaded = None
    table = Table(title=f"adapter versions of {registry.base_model}")
    for column in ("name", "status", "loaded", "parent", "replaced", "created", "promoted", "note"):
        table.add_column(column, overflow="fold")
    for v in versions:
        table.add_row(v.name, v.status, "?" if loaded is None else ("yes" if v.name in loaded else "no"),
                      v.parent or "", v.replaced or "", f"{v.created_at:%Y-%m-%d %H:%M}",
                      f"{v.promoted_at:%Y-%m-%d %H:%M}" if v.promoted_at else "", v.note)
    console.print(table if versions else "no adapter versions registered yet")


@app.command("register")
def adapters_register(
    name: Annotated[str, typer.Argument(help="New, never-used version name, e.g. med-v0007.")],
    path: Annotated[Path, typer.Argument(help="Directory with adapter_config.json and the weights.")],
    parent: Annotated[str | None, typer.Option(help="The version this one was trained from.")] = None,
    note: Annotated[str, typer.Option(help="Free text shown in the list.")] = "",
    actor: ActorOption = None,
) -> None:
    """Record a trained adapter as a candidate."""
    registry, _ = _registry_and_client()
    with serving_errors():
        registry.register(name, path, actor=actor_name(actor), parent=parent, note=note)
    console.print(f"{name}: registered as candidate")


@app.command("load")
def adapters_load(
    name: Annotated[str, typer.Argument(help="A registered version.")],
) -> None:
    """Load a registered version into serving (for evaluation) without making it live."""
    registry, client = _registry_and_client()
    with serving_errors():
        version = registry.get(name)
        for replica in client.replicas():
            replica.load_adapter(version.name, version.path)
            console.print(f"{name}: loaded into serving at {replica.url}")


@app.command("promote")
def adapters_promote(
    name: Annotated[str, typer.Argument(help="A candidate or retired version.")],
    wait: Annotated[bool, typer.Option(help="Wait the grace period and unload the replaced version.")] = True,
    actor: ActorOption = None,
) -> None:
    """Load NAME, smoke-test it through the public API, and make it the live version."""
    from adapters import rollout

    registry, client = _registry_and_client()
    with serving_errors():
        promotion = rollout.promote(registry, name, client, actor=actor_name(actor))
        console.print(f"{promotion.live} is live (was {promotion.previous or 'the base model'}), "
                      f"in {promotion.seconds:.2f} s")
        _unload_replaced(registry, client, wait)


@app.command("rollback")
def adapters_rollback(
    reason: Annotated[str, typer.Option(help="Why, for the audit log and the version's note.")] = "rolled back",
    wait: Annotated[bool, typer.Option(help="Wait the grace period and unload the rolled-back version.")] = True,
    actor: ActorOption = None,
) -> None:
    """Make the version the live one replaced live again; the current one becomes rejected."""
    from adapters import rollout

    registry, client = _registry_and_client()
    with serving_errors():
        promotion = rollout.rollback(registry, client, actor=actor_name(actor), reason=reason)
        console.print(f"rolled back {promotion.previous}: {promotion.live} answers again")
        _unload_replaced(registry, client, wait)


def _unload_replaced(registry, client, wait: bool) -> None:  # noqa: ANN001
    from adapters import rollout

    if not wait:
        return
    grace = get_settings().promotion_grace_seconds
    console.print(f"unloading replaced versions after a {grace:g} s grace period ...")
    unloaded = rollout.unload_stale(registry, client, grace)
    console.print("unloaded: " + (", ".join(unloaded) or "nothing"))


@app.command("retire")
def adapters_retire(name: Annotated[str, typer.Argument()], actor: ActorOption = None) -> None:
    """Take a version out of use; retiring the live version leaves the base model answering."""
    registry, _ = _registry_and_client()
    with serving_errors():
        registry.retire(name, actor=actor_name(actor))
    console.print(f"{name}: retired")


@app.command("reject")
def adapters_reject(
    name: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="Why it must not go live.")],
    actor: ActorOption = None,
) -> None:
    """Mark a candidate as never to go live."""
    registry, _ = _registry_and_client()
    with serving_errors():
        registry.reject(name, actor=actor_name(actor), reason=reason)
    console.print(f"{name}: rejected")
