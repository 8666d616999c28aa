"""`careloop export`, `train`, `runs`, `eval`: feedback datasets, training runs and their reports."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from careloop.settings import get_settings, redacted
from cli.common import ActorOption, CommandError, actor_name, console, database_sessions, serving_errors


def export(
    kind: Annotated[Literal["sft", "dpo", "kto"], typer.Option(help="Dataset shape for TRL's trainers.")],
    out: Annotated[Path, typer.Option(help="Directory for train/eval files and manifest.json.")],
    format: Annotated[Literal["jsonl", "parquet", "hf"],  # noqa: A002
                      typer.Option(help="jsonl, parquet, or a saved datasets.DatasetDict.")] = "jsonl",
    since: Annotated[datetime | None, typer.Option(help="Only feedback from this time on (ISO 8601, UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Only feedback before this time.")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0, max=1, help="Share of prompts held out for evaluation.")] = 0.1,
    min_gold_accuracy: Annotated[float, typer.Option(min=0, max=1,
                                                     help="Drop annotators below this gold accuracy.")] = 0.6,
    actor: ActorOption = None,
) -> None:
    """Export TRL-ready feedback datasets, split by prompt, with a snapshot manifest."""
    from datetime import UTC

    from feedback.export import ExportConfig, export

    def utc(moment: datetime | None) -> datetime | None:
        return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment

    sessions = database_sessions()
    config = ExportConfig(kind, utc(since), utc(until), eval_fraction, min_gold_accuracy)
    manifest = export(sessions, config, out, format, actor=actor_name(actor))
    console.print(f"{kind}: {manifest.counts['train']} train / {manifest.counts['eval']} eval rows in {out} "
                  f"(snapshot {manifest.snapshot_sha256[:12]}); dropped: "
                  + (", ".join(f"{k} {v}" for k, v in manifest.dropped.items()) or "nothing"))


def train(
    config: Annotated[Path | None, typer.Option(help="Training config YAML (see trainer/config.py).")] = None,
    resume: Annotated[int | None, typer.Option(help="Resume run ID, skipping the steps already done.")] = None,
    actor: ActorOption = None,
) -> None:
    """Snapshot -> SFT -> DPO -> evaluate against live -> gate -> publish (promote if allowed)."""
    import redis

    from adapters.registry import open_registry
    from adapters.rollout import open_client
    from trainer.config import ConfigError, TrainConfig
    from trainer.pipeline import run_training
    from trainer.schedule import Busy, training_lock

    settings = get_settings()
    try:
        train_config = TrainConfig.from_yaml(config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    sessions = database_sessions()
    client = open_client(settings) if train_config.auto_promote else None
    try:
        with serving_errors(), training_lock(settings.redis_url):
            result = run_training(settings, train_config, sessions, open_registry(settings), client,
                                  actor=actor_name(actor), resume=resume)
    except ConfigError as exc:  # e.g. the gate policy file, read when the run gets to the gate
        raise CommandError(str(exc)) from None
    except Busy as exc:
        raise CommandError(f"{exc}: careloop trains one run at a time; `careloop runs` shows it.") from None
    except redis.ConnectionError as exc:
        raise CommandError(f"careloop train takes the one-run-at-a-time training lock in Redis at "
                           f"{redacted(settings.redis_url)}, which does not answer: {exc}") from None
    console.print(f"run {result.run_id}: {result.status} ({result.adapter_version})")
    for reason in result.decision.reasons:
        console.print(f"  {reason}", markup=False)


def runs(limit: Annotated[int, typer.Option(min=1, help="How many of the latest runs.")] = 10) -> None:
    """Training runs: status, step, progress and ETA of a running one, the adapter each produced, and the
    clinicians' data each trained on."""
    from trainer.runs import describe_data, recent_runs
    from trainer.schedule import progress, settle_stopped_runs

    sessions = database_sessions()
    settle_stopped_runs(sessions, get_settings().redis_url)
    table = Table(title="training runs")
    for column in ("run", "status", "step", "progress", "eta", "adapter", "started", "by", "clinicians' data",
                   "error"):
        table.add_column(column, overflow="fold")
    for run in recent_runs(sessions, limit):
        now = progress(sessions, run)
        eta = now.eta_label if run.status == "running" else ""
        table.add_row(str(run.id), run.status, now.step_label, f"{now.percent:.0f}%", eta, run.adapter_version or "",
                      f"{run.started_at:%Y-%m-%d %H:%M}", run.actor, describe_data(run.data), run.error[:80])
    console.print(table)


def leaderboard(
    by_origin: Annotated[bool, typer.Option("--by-origin", help="A table per item origin (students' questions, "
                                            "seed questions) as well.")] = False,
    rounds: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for the intervals.")] = 1000,
) -> None:
    """Every version clinicians have compared, base model included: Bradley-Terry ratings (Elo scale, the
    base model at 1000) from their side-by-side judgments, with 90% bootstrap intervals."""
    from careloop.base_model import base_model_name
    from feedback.leaderboard import leaderboard as rate

    sessions, base = database_sessions(), base_model_name(get_settings())
    boards = [rate(sessions, base=base, rounds=rounds)]
    if by_origin and boards[0].games:
        boards += [rate(sessions, base=base, rounds=rounds, category=origin) for origin in ("student", "seed")]
    for board in boards:
        scope = f" ({board.category} questions)" if board.category else ""
        if not board.games:
            console.print(f"no clinicians' comparisons of two versions yet{scope}")
            continue
        table = Table(title=f"leaderboard{scope}: {board.games} judgments, {board.anchor} = 1000, "
                            f"{board.confidence:.0%} intervals")
        for column in ("rank", "version", "rating", "interval", "judgments", "wins (ties half)"):
            table.add_column(column)
        for rank, s in enumerate(board.standings, start=1):
            table.add_row(str(rank), s.version, f"{s.rating:.0f}", f"{s.low:.0f} to {s.high:.0f}", str(s.games),
                          f"{s.wins:g}")
        console.print(table)


def evaluate(
    adapter: Annotated[str, typer.Option(help="The adapter version to evaluate.")],
    against: Annotated[str, typer.Option(help="`live`, `base`, or another version.")] = "live",
    data: Annotated[Path | None, typer.Option(help="JSONL of the seed formats "
                                              "[default: the seed evaluation sets].")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory [default: $CARELOOP_HOME/evals/<time>].")] = None,
    max_items: Annotated[int, typer.Option(min=1, help="Reference questions from the seed sets (and, on the "
                                           "tuning split, items per set).")] = 40,
    split: Annotated[Literal["confirm", "tune"], typer.Option(help=(
        "The seed's safety, triage and knowledge sets: the frozen confirmation split (report on it) or the tuning "
        "split (choose configs on it)."))] = "confirm",
    confirm_items: Annotated[int | None, typer.Option(min=1, help="Items per confirmation set (default: all).")] = None,
) -> None:
    """Evaluate one adapter against live (or another version) on the same items; write the report."""
    from datetime import UTC

    from adapters.registry import open_registry
    from careloop.base_model import resolve_base_model
    from careloop.decoding import decoding_for
    from feedback.quality import win_rate
    from library.index import Retriever
    from trainer.config import EvalSettings
    from trainer.evaluate import Grounding, Models
    from trainer.gate import Policy
    from trainer.report import evaluation_report, save_report
    from trainer.snapshot import evaluation_data

    settings = get_settings()
    database_sessions()  # a missing schema in one line
    registry = open_registry(settings)
    with serving_errors():
        candidate = registry.get(adapter)
        if against == "live":
            live = registry.live()
            baseline = {"name": live.name, "path": live.path} if live else None
        elif against == "base":
            baseline = None
        else:
            other = registry.get(against)
            baseline = {"name": other.name, "path": other.path}
    sets = evaluation_data(settings.seed_data_dir, data, max_items, split=split, confirm_limit=confirm_items)
    base = resolve_base_model(settings)
    adapters = {"candidate": Path(candidate.path)} | ({"baseline": Path(baseline["path"])} if baseline else {})
    against_name = baseline["name"] if baseline else base.name
    policy = Policy.load(None)
    grounding = (Grounding.find(Retriever(settings, database_sessions()), sets["eval_reference"],
                                settings.retrieval_passage_chars) if settings.retrieval_enabled else None)
    models = Models.load(base.name_or_path, adapters, answer_cache=settings.answer_cache_dir)
    models.batch = EvalSettings().batch_size
    report = evaluation_report(models, sets, decoding_for(settings),
                               policy.confidence,
                               run=f"eval {adapter}", snapshot=str(data or "seed evaluation sets"),
                               baseline=against_name, leakage="not checked", grounding=grounding,
                               split="" if data else split)
    win = win_rate(database_sessions(), adapter, against_name)
    report["win_rate"] = {"rate": win.rate, "judgments": win.judgments}
    out = out or settings.home / "evals" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    save_report(out, report, policy)
    ours, theirs = report["candidate"]["summary"], report["live_results"]["summary"]
    console.print(f"{adapter} vs {report['live']}: report in {out}")
    console.print("  clinician win rate: " + (f"{win.rate:.0%} over {win.judgments} judgments" if win.judgments
                                                 else "no side-by-side judgments yet"))
    for metric, difference in report["differences"].items():
        console.print(f"  {metric}: {ours[metric]:.3f} vs {theirs[metric]:.3f} "
                      f"({difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}], "
                      f"n={difference['n']})", markup=False)
