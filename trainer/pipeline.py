"""`careloop train`: snapshot -> SFT -> DPO -> evaluate -> gate -> publish, recorded as a run.

Each step writes its output under ``$CARELOOP_HOME/runs/<id>/``; ``resume`` skips the steps whose
output is already there. Nothing is promoted unless the gate passed and auto-promote is on, and
a run that dies midway leaves the live version as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from adapters import rollout
from adapters.registry import Registry, RegistryError
from careloop.base_model import resolve_base_model
from careloop.decoding import decoding_for
from careloop.log import ensure_logging, get_logger, line_formatter
from careloop.settings import Settings
from feedback.in_flight import wait_until_stored
from library.index import Retriever
from serving.client import ServingClient
from trainer import memory, runs
from trainer.config import TrainConfig
from trainer.data import reference_conversations
from trainer.dpo import run_dpo
from trainer.evaluate import Grounding, JudgeEndpoint, Models, evaluation_units
from trainer.gate import Decision, Policy
from trainer.progress import progress_callback
from trainer.report import evaluation_report, save_report
from trainer.sft import run_sft
from trainer.snapshot import PromptGrounding, Snapshot, build_snapshot

log = get_logger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    adapter_version: str | None
    decision: Decision


def run_training(settings: Settings, config: TrainConfig, sessions: sessionmaker[Session], registry: Registry,
                 client: ServingClient | None, *, actor: str, resume: int | None = None) -> RunResult:
    run_id = resume or runs.start_run(sessions, actor, config.model_dump(mode="json"))
    if resume:
        runs.update_run(sessions, run_id, status="running", error="")
    directory = runs.run_dir(settings, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    ensure_logging(settings.log_level, settings.log_json)
    run_log = _log_to(directory / "train.log")
    timings: dict[str, float] = dict(runs.get_run(sessions, run_id).timings or {})

    tracker = runs.StepProgress(sessions, run_id)

    def step(name: str) -> None:
        runs.update_run(sessions, run_id, step=name, timings=timings, progress={})
        log.info("training_step", run=run_id, step=name)

    try:
        started = time.perf_counter()
        step("snapshot")
        base = resolve_base_model(settings, build_if_missing=True)  # its tokenizer measures grounded rows
        retriever = Retriever(settings, sessions) if settings.retrieval_enabled else None
        if (directory / "snapshot" / "snapshot.json").exists():
            snapshot = Snapshot.load(directory / "snapshot")
        else:
            # What clinicians submitted before the run started is trained on (issue 29, 2): wait, within a
            # bound, for what is still in the bots' outboxes or the feedback queue, and record what was not.
            late = wait_until_stored(settings.redis_url, settings.train_feedback_wait_seconds)
            log.info("training_feedback_waited", run=run_id, waited_seconds=late.waited_seconds,
                     still_on_its_way=late.describe())
            started_at = runs.get_run(sessions, run_id).started_at
            snapshot = build_snapshot(directory / "snapshot", config, settings.seed_data_dir, sessions,
                                      _prompt_grounding(retriever, base.name_or_path), in_flight=asdict(late),
                                      until=started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC))
        runs.update_run(sessions, run_id, snapshot_sha256=snapshot.sha256, data=snapshot.clinician_data())
        timings["snapshot"] = time.perf_counter() - started

        live = registry.live()
        held_out = reference_conversations(snapshot.data["eval_reference"])

        started = time.perf_counter()
        step("sft")
        sft_dir = directory / "sft-adapter"
        sft_metrics = {}
        if not (sft_dir / "adapter_config.json").exists():
            sft = run_sft(base.name_or_path, snapshot.data["sft"], held_out, config.lora, config.sft, directory,
                          config.random_seed, callbacks=[progress_callback(tracker, "sft")])
            sft_metrics = {"sft_train_loss": sft.train_loss, "sft_eval_loss_before": sft.eval_loss_before,
                           "sft_eval_loss_after": sft.eval_loss_after, "sft_tokens_per_second": sft.tokens_per_second,
                           "sft_padding_fraction": sft.padding_fraction}
        timings["sft"] = time.perf_counter() - started
        memory.release()

        started = time.perf_counter()
        step("dpo")
        adapter = directory / "adapter"
        dpo_metrics = {}
        if not (adapter / "adapter_config.json").exists():
            dpo = run_dpo(base.name_or_path, sft_dir, snapshot.data["dpo"], config.dpo, directory, config.random_seed,
                          config.lora, callbacks=[progress_callback(tracker, "dpo")])
            dpo_metrics = {"dpo_train_loss": dpo.train_loss, "dpo_train_reward_accuracy": dpo.reward_accuracy,
                           "dpo_step_seconds": dpo.step_seconds}
        timings["dpo"] = time.perf_counter() - started
        memory.release()

        started = time.perf_counter()
        step("evaluate")
        adapters = {"candidate": adapter} | ({"baseline": Path(live.path)} if live else {})
        models = Models.load(base.name_or_path, adapters, answer_cache=settings.answer_cache_dir)
        models.batch = config.eval.batch_size
        grounding = (Grounding.find(retriever, snapshot.data["eval_reference"], settings.retrieval_passage_chars)
                     if retriever is not None else None)
        tracker.start("evaluate", evaluation_units(snapshot.data, ["candidate", "baseline" if live else "base"],
                                                   grounded=grounding is not None, batch=models.batch))
        models.on_batch = tracker.advance
        policy = Policy.load(config.gate_policy)
        judge = (JudgeEndpoint(settings.judge_url, settings.judge_model, settings.judge_api_key)
                 if settings.judge_url else None)
        report = evaluation_report(models, snapshot.data, decoding_for(settings), policy.confidence, run=run_id,
                                   snapshot=snapshot.sha256, baseline=live.name if live else base.name,
                                   leakage=snapshot.leakage, judge=judge, grounding=grounding,
                                   split=config.eval.split)
        timings["evaluate"] = time.perf_counter() - started

        step("gate")
        decision = save_report(directory, report, policy)
        metrics = {**sft_metrics, **dpo_metrics, "candidate": report["candidate"]["summary"],
                   "live": report["live_results"]["summary"]}
        runs.update_run(sessions, run_id, metrics=metrics, decision=asdict(decision))

        step("publish")
        version = _next_version(registry, settings.resolved_adapter_dir)
        published = settings.resolved_adapter_dir / version
        _publish(adapter, published, lambda card: _write_card(card, version, base.name, live.name if live else None,
                                                              snapshot, config, metrics, decision))
        registry.register(version, published, actor=actor, parent=live.name if live else None,
                          training_run_id=run_id, data_window=snapshot.data_window(), metrics=metrics,
                          note="; ".join(decision.problems)[:1000])
        if decision.verdict == "reject":
            registry.reject(version, actor=actor, reason="gate: " + "; ".join(decision.problems)[:900])
            status = "rejected"
        elif decision.verdict == "inconclusive":  # kept for an admin: never promoted by itself
            status = "candidate"
        elif config.auto_promote and client is not None:
            rollout.promote(registry, version, client, actor=actor)
            status = "promoted"
        else:
            status = "candidate"
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        runs.finish_run(sessions, run_id, status=status, adapter_version=version, timings=timings)
        log.info("training_finished", run=run_id, status=status, adapter=version)
        if status == "promoted":  # the run is done; the version it replaced leaves serving after the grace period
            rollout.unload_replaced(registry, client, settings.promotion_grace_seconds)
        return RunResult(run_id, status, version, decision)
    except Exception as exc:
        log.exception("training_failed", run=run_id)
        runs.finish_run(sessions, run_id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                        timings=timings)
        raise
    finally:
        logging.getLogger().removeHandler(run_log)
        run_log.close()


def _prompt_grounding(retriever: Retriever | None, base_model: str) -> PromptGrounding | None:
    if retriever is None:
        return None
    from transformers import AutoTokenizer

    return PromptGrounding(retriever, AutoTokenizer.from_pretrained(base_model))


def _log_to(path: Path) -> logging.Handler:
    """Everything logged during the run (careloop's steps, TRL's progress) also goes to the run's log."""
    handler = logging.FileHandler(path)
    handler.setFormatter(line_formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def _publish(adapter: Path, published: Path, write_card: Callable[[Path], None]) -> None:
    """Copy the adapter and its card next to ``published``, then rename: serving and the next run
    see a whole adapter or none (a full disk leaves no half-copied folder behind)."""
    partial = published.with_name(f".{published.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while publishing
    try:
        shutil.copytree(adapter, partial)
        write_card(partial / "README.md")
        partial.rename(published)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _next_version(registry: Registry, adapter_dir: Path) -> str:
    """The next `med-vNNNN` free in the registry and in the adapter directory (names are never reused)."""
    number = len(registry.versions()) + 1
    while True:
        name = f"med-v{number:04d}"
        if not (adapter_dir / name).exists():
            try:
                registry.get(name)
            except RegistryError:
                return name
        number += 1


def _write_card(path: Path, version: str, base: str, parent: str | None, snapshot: Snapshot, config: TrainConfig,
                metrics: dict, decision: Decision) -> None:
    manifest = snapshot.feedback_manifest or {}
    lines = [f"# {version}", "", f"LoRA adapter for `{base}`, trained by careloop (SFT then DPO).", "",
             f"- parent (live when trained): {parent or 'none (base model)'}",
             f"- data snapshot: `{snapshot.sha256}`",
             f"- feedback window: {manifest.get('window', {}).get('first_event')} .. "
             f"{manifest.get('window', {}).get('last_event')}; annotators: {len(manifest.get('annotators', []))}",
             f"- training rows: SFT {len(snapshot.data['sft'])}, DPO {len(snapshot.data['dpo'])}",
             f"- leakage removed: {snapshot.leakage}", "", "## Gate", "",
             f"Decision: {decision.verdict}", "",
             *[f"- {reason}" for reason in decision.reasons], "", "## Metrics", "", "```json",
             json.dumps(metrics, indent=2, default=str), "```", "", "## Config", "", "```json",
             config.model_dump_json(indent=2), "```", ""]
    path.write_text("\n".join(lines))
