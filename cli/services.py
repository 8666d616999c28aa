"""`careloop doctor`, `serve`, `up`, `bot`, `worker`, `beat`: the commands that start or check a part."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from careloop.settings import get_settings
from cli.common import CommandError, console


def doctor() -> None:
    """Show what is configured and reachable; exit 1 if a required part is missing."""
    from cli.doctor import run_checks

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


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: CARELOOP_SERVING_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: CARELOOP_SERVING_PORT].")] = None,
) -> None:
    """Run the embedded engine behind the OpenAI/TGI-compatible HTTP API, with the live adapter
    version loaded before the first request."""
    from serving.server import ExternalBackend
    from serving.server import main as serve_main

    settings = get_settings()
    overrides = {k: v for k, v in {"serving_host": host, "serving_port": port}.items() if v is not None}
    try:
        serve_main(settings.model_copy(update=overrides), _live_lora_modules(settings))
    except ExternalBackend as exc:
        raise CommandError(str(exc)) from None


def _live_lora_modules(settings) -> list:
    """The registry's live version as serving's start-up adapter; none (the base model answers, and
    a warning is logged) while the database cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from adapters.registry import open_registry
    from careloop.log import get_logger
    from serving.server import LoRAModule

    try:
        live = open_registry(settings).live()
    except SQLAlchemyError as exc:
        get_logger(__name__).warning("registry_unreachable_serving_base_model_only", error=str(exc).splitlines()[0])
        return []
    return [] if live is None else [LoRAModule(live.name, live.path)]


def up(
    status: Annotated[bool, typer.Option("--status", help="Show what a running `careloop up` runs, and exit.")] = False,
) -> None:
    """Run everything on this machine: Redis (if none answers), serving, workers, beat and the web app."""
    from cli import up as supervisor
    from cli.doctor import feedback_delivery

    settings = get_settings()
    if status:
        try:
            running = supervisor.status(settings)
        except supervisor.UpError as exc:
            raise CommandError(str(exc)) from None
        _print_status(running)
        down = [row["name"] for row in running.parts if row["state"] != "up"]
        if down:
            raise CommandError(f"some parts are not up: {', '.join(down)} (their logs: {running.logs}/<part>.log)")
        try:
            console.print(f"{'feedback:':<12}{feedback_delivery(settings)}", markup=False, highlight=False,
                          soft_wrap=True)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from None
        return
    try:
        supervisor.run(settings, lambda line: console.print(line, highlight=False, soft_wrap=True))
    except supervisor.UpError as exc:
        raise CommandError(str(exc)) from None


def _print_status(running) -> None:
    """`careloop up --status` in 80 columns: the address and the Redis on their own lines, the logs'
    folder once (each part's log is <part>.log in it), and a table narrow enough not to cut a name."""
    redis_origin = "started by careloop up" if running.redis_started else "already running"
    for label, value in (("web app", running.bot_url), ("redis", f"{running.redis_url} ({redis_origin})"),
                         ("logs", f"{_short_path(running.logs)}/<part>.log"), ("supervisor", f"pid {running.pid}")):
        console.print(f"{label + ':':<12}{value}", markup=False, highlight=False, soft_wrap=True)
    table = Table("part", "state", "pid", "restarts", "since", box=None, pad_edge=False)
    for row in running.parts:
        table.add_row(row["name"], row["state"], str(row["pid"]), str(row["restarts"]), row["since"])
    console.print(table)


def _short_path(path: Path) -> str:
    """``path`` as short as it stays unambiguous: relative to the working directory when inside it
    (the default CARELOOP_HOME is ./var), else under ~, else whole. Never cut."""
    path = path.resolve()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        if path.is_relative_to(base) and path != base:
            return prefix + str(path.relative_to(base))
    return str(path)


def bot(
    host: Annotated[str | None, typer.Option(help="Bind address [default: CARELOOP_BOT_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: CARELOOP_BOT_PORT].")] = None,
) -> None:
    """Run the web app: chat (students), review (nurses, physicians), admin. Sign-in required."""
    from bot.app import main as bot_main

    bot_main(get_settings(), host, port)


# The modules whose @shared_task functions a worker runs, one per queue-owning package.
TASK_MODULES = ("feedback.tasks", "trainer.tasks")


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "feedback,generation,training",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run a Celery worker (feedback ingest, review generation, training) on CARELOOP_REDIS_URL."""
    from careloop.queues import QUEUES, configure

    unknown = set(queues.split(",")) - set(QUEUES)
    if unknown:
        raise CommandError(f"unknown queue(s) {', '.join(sorted(unknown))}; choose from {', '.join(QUEUES)}")
    from celery.signals import worker_ready

    from cli.up import WORKER_READY

    settings = get_settings()
    # Said on stdout whatever the log level: `careloop up` and scripts wait for this line.
    worker_ready.connect(lambda **_: print(f"{WORKER_READY} ({queues})", flush=True), weak=False)
    # A node name of its own per process: two workers named alike (Celery's default, celery@host) answer
    # `careloop doctor`'s broadcast as one, and Celery warns of the clash.
    node = f"careloop-{queues.replace(',', '-')}-{os.getpid()}@%h"
    configure(settings, include=TASK_MODULES).worker_main(["worker", f"--queues={queues}",
                                                           f"--concurrency={concurrency}",
                                                           f"--loglevel={settings.log_level}", f"--hostname={node}",
                                                           "--without-gossip", "--without-mingle"])


def beat() -> None:
    """Run Celery beat: the periodic jobs (filling the review queue, checking whether training is due)."""
    from celery.signals import beat_init

    from careloop.queues import configure, keep_beat_heartbeat
    from feedback import tasks as feedback_tasks
    from trainer import tasks as training_tasks

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = feedback_tasks.schedule(settings) | training_tasks.schedule(settings)
    feedback_tasks.fill_when_beat_starts(settings)
    beat_init.connect(lambda **_: keep_beat_heartbeat(settings), weak=False)  # what `careloop doctor` looks for
    configure(settings, beat_schedule=schedule).start(["beat", f"--loglevel={settings.log_level}",
                               f"--schedule={settings.home / 'celerybeat-schedule'}"])
