"""The training pipeline on the tiny demo model: helpful data is promoted and served, harmful data
is rejected with reasons, a killed run changes nothing, leakage is removed and reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import yaml
from sqlalchemy import select
from support import fill_disk

from adapters import rollout
from adapters.registry import Status, open_registry
from adapters.rollout import open_client
from careloop import db
from careloop.audit import AuditEvent
from careloop.seed import load_seed
from careloop.settings import load_settings
from feedback import schemas
from feedback.export import in_eval
from feedback.store import store_event
from trainer import runs
from trainer.config import TrainConfig
from trainer.pipeline import run_training
from trainer.snapshot import build_snapshot

# Mechanics on the tiny model: seed pairs only and two pairs per forward pass (the defaults add
# contrast pairs and one pair per pass for the real model's sake; the outcomes here were tuned without).
QUICK = {"sft": {"max_steps": 20, "batch_size": 8, "max_examples": 300, "learning_rate": 0.003, "max_length": 256},
         "dpo": {"max_steps": 40, "batch_size": 8, "learning_rate": 0.002, "max_length": 256, "max_pairs": 200,
                 "contrast_share": 0, "micro_batch_size": 2},
         "eval": {"max_items": 40, "confirm_items": 40, "max_pairs": 40, "eval_fraction": 0.1},
         # Seed questions bare, as the outcomes were tuned (grounded prompts: tests/trainer/test_snapshot.py).
         "grounding": {"sft_share": 0}}
# Short greedy answers, as the outcomes were tuned: the evaluation decodes as the chat does (these settings).
QUICK_DECODING = {"answer_max_tokens": 16, "decoding_temperature": 0}


# The default policy judges preference on clinicians' held-out pairs alone and calls fewer than 40
# inconclusive; these runs have none, so seed pairs decide here (a demonstration policy).
SEED_PAIRS_DECIDE = {"min_clinician_pairs": 0}


def _policy(tmp_path, **rules) -> str:
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump({**SEED_PAIRS_DECIDE, **rules}))
    return str(path)


@pytest.fixture
def setup(tmp_path, server, tiny_model_dir):
    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    settings = load_settings(home=tmp_path / "home", database_url=url, base_model=str(tiny_model_dir),
                             serving_url=server.url, control_token=server.token, adapter_dir=server.adapter_dir,
                             live_cache_seconds=0, **QUICK_DECODING)
    sessions = db.session_factory(db.make_engine(url))
    return settings, sessions, open_registry(settings), open_client(settings)


def test_a_run_on_good_data_is_promoted_and_then_answers(setup, tmp_path):
    settings, sessions, registry, client = setup
    config = TrainConfig.model_validate({**QUICK, "auto_promote": True, "gate_policy": _policy(tmp_path)})
    result = run_training(settings, config, sessions, registry, client, actor="test")
    assert result.status == "promoted", result.decision.reasons
    run = runs.get_run(sessions, result.run_id)
    assert run.metrics["sft_eval_loss_after"] < run.metrics["sft_eval_loss_before"]  # SFT lowered held-out loss
    assert run.metrics["candidate"]["pair_accuracy"] > run.metrics["live"]["pair_accuracy"]
    assert run.snapshot_sha256 and run.timings["total"] > 0 and run.step == "publish"
    live = registry.live()
    assert live.name == result.adapter_version and live.training_run_id == result.run_id
    assert client.chat([{"role": "user", "content": "What is asthma?"}], max_tokens=4).model == live.name
    report = json.loads((settings.home / "runs" / str(result.run_id) / "report.json").read_text())
    for track in ("rougeL", "bleu", "meteor", "pair_accuracy", "mcq_accuracy", "refusal_harmful",
                  "over_refusal_benign", "urgent_care_red_flags"):
        assert track in report["candidate"]["summary"] and track in report["differences"]
    assert "METEOR (nltk" in report["meteor"]
    run_dir = settings.home / "runs" / str(result.run_id)
    assert ("event='training_step' run=" in (run_dir / "train.log").read_text()
            and "step='dpo'" in (run_dir / "train.log").read_text())
    markdown = (run_dir / "report.md").read_text()
    assert "Gate decision: **promote**" in markdown and "human preference (held-out pairs): better" in markdown
    assert "| pair_accuracy |" in markdown and "| refusal_harmful |" in markdown
    page = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and "<td>mcq_accuracy</td>" in page
    card = (settings.adapter_dir / live.name / "README.md").read_text()
    assert "Decision: promote" in card and run.snapshot_sha256 in card
    registry.retire(live.name, actor="test")
    client.unload_adapter(live.name)


def test_an_auto_promoted_run_unloads_the_version_it_replaced_after_the_grace_period(setup, tmp_path):
    settings, sessions, registry, client = setup
    settings = settings.model_copy(update={"promotion_grace_seconds": 2.0})
    registry.register("ap-v0001", settings.adapter_dir / "med-v0001", actor="test")
    rollout.promote(registry, "ap-v0001", client, actor="test")
    # What is checked here is the rollout, not the gate.
    policy = _policy(tmp_path, safety_tolerance=1.0, over_caution_tolerance=1.0, min_gain=-2.0, reference_metrics=[])
    config = TrainConfig.model_validate({"sft": {**QUICK["sft"], "max_steps": 2},
                                         "dpo": {**QUICK["dpo"], "max_steps": 2},
                                         "eval": {**QUICK["eval"], "max_items": 4, "confirm_items": 4},
                                         "gate_policy": policy, "auto_promote": True})
    result = run_training(settings, config, sessions, registry, client, actor="test")
    assert result.status == "promoted", result.decision.reasons
    # Against an adapter, over-caution is bounded against the base model too (its answers cached for later runs)
    assert any(r.startswith("ok over-caution against the base model: over_refusal_benign")
               for r in result.decision.reasons), result.decision.reasons
    assert list(settings.answer_cache_dir.glob("*.json"))
    replaced = registry.get("ap-v0001")
    assert replaced.status == Status.RETIRED and registry.live().name == result.adapter_version
    assert (datetime.now(UTC) - replaced.status_changed_at.replace(tzinfo=UTC)).total_seconds() >= 2.0
    assert "ap-v0001" not in client.loaded_adapters() and result.adapter_version in client.loaded_adapters()
    registry.retire(result.adapter_version, actor="test")
    client.unload_adapter(result.adapter_version)


def test_a_run_without_enough_clinician_evidence_waits_for_an_admin_who_promotes_it_on_the_record(setup):
    """Issue 32, 1: on seed data alone the shipped policy's preference rule is inconclusive, so the run's
    version is kept as a candidate (not promoted, not rejected); an admin's promotion of it says in the
    audit log what the gate found."""
    settings, sessions, registry, client = setup
    config = TrainConfig.model_validate({"sft": {**QUICK["sft"], "max_steps": 2},
                                         "dpo": {**QUICK["dpo"], "max_steps": 2},
                                         "eval": {**QUICK["eval"], "max_items": 4, "confirm_items": 4},
                                         "auto_promote": True})
    result = run_training(settings, config, sessions, registry, client, actor="test")
    assert result.status == "candidate" and result.decision.verdict == "inconclusive", result.decision.reasons
    assert registry.live() is None, "nothing changed for students"
    version = registry.get(result.adapter_version)
    assert version.status == Status.CANDIDATE and "not enough clinician evidence: 0 held-out" in version.note
    run = runs.get_run(sessions, result.run_id)
    assert run.status == "candidate" and run.decision["verdict"] == "inconclusive"
    report = json.loads((settings.home / "runs" / str(result.run_id) / "report.json").read_text())
    differences = report["differences"]
    assert differences["pair_accuracy_clinician"]["n"] == 0 and differences["pair_accuracy_seed"]["n"] > 0
    rollout.promote(registry, version.name, client, actor="bot:ad.min")
    with sessions() as session:
        promoted = session.scalars(select(AuditEvent).where(AuditEvent.action == "adapter.promote",
                                                            AuditEvent.target == version.name)).one()
    assert promoted.actor == "bot:ad.min" and "not enough clinician evidence" in promoted.details["note"]
    registry.retire(version.name, actor="test")
    client.unload_adapter(version.name)


def test_a_run_on_inverted_preferences_is_rejected_and_live_is_unchanged(setup, tmp_path):
    settings, sessions, registry, client = setup
    # Clinicians who (wrongly) preferred the off-topic answer on every training prompt.
    for pair in load_seed(settings.seed_data_dir, "preferences"):
        if not in_eval(pair.prompt, 0.1):
            store_event(sessions, schemas.ComparisonEvent(
                annotator="nurse.x", prompt=pair.prompt, response_a=pair.chosen, response_b=pair.rejected,
                version_a="seed", version_b="seed", shown_order="ab", choice="b",
                scores_a={"accuracy": 1, "helpfulness": 1, "relevance": 1, "comprehensiveness": 1},
                scores_b={"accuracy": 5, "helpfulness": 5, "relevance": 5, "comprehensiveness": 5}))
    # SFT barely runs: what is checked is that DPO on these pairs is caught by the gate.
    config = TrainConfig.model_validate({**QUICK, "sft": {**QUICK["sft"], "max_steps": 2},
                                         "dpo": {**QUICK["dpo"], "include_seed_pairs": False, "max_steps": 20},
                                         "auto_promote": True, "gate_policy": _policy(tmp_path)})
    result = run_training(settings, config, sessions, registry, client, actor="test")
    assert result.status == "rejected"
    assert any(r.startswith("FAIL human preference: pair_accuracy -") for r in result.decision.reasons), \
        result.decision.reasons
    assert registry.live() is None  # nothing changed for students
    version = registry.get(result.adapter_version)
    assert version.status == Status.REJECTED and "pair_accuracy" in version.note


def test_leakage_is_removed_and_reported(setup):
    settings, sessions, _, _ = setup
    # A held-out evaluation question that a clinician's correction brings into the training split.
    question = next(r.question for r in load_seed(settings.seed_data_dir, "eval")[:40] if not in_eval(r.question, 0.1))
    store_event(sessions, schemas.CorrectionEvent(annotator="dr.o", prompt=question, original="x", corrected="y"))
    snapshot = build_snapshot(settings.home / "snap", TrainConfig.model_validate(QUICK), settings.seed_data_dir,
                              sessions)
    assert snapshot.leakage["removed_sft"] >= 1 and question in snapshot.leakage["examples"]
    assert all(row["messages"][0]["content"] != question for row in snapshot.data["sft"])
    saved = json.loads((settings.home / "snap" / "snapshot.json").read_text())
    assert saved["leakage"]["removed_sft"] == snapshot.leakage["removed_sft"]


def test_a_killed_run_changes_nothing_and_the_next_run_succeeds(setup, tmp_path, redis_server):
    settings, sessions, registry, client = setup
    question = [{"role": "user", "content": "What is asthma?"}]
    registry.register("kl-v0001", settings.adapter_dir / "med-v0001", actor="test")
    rollout.promote(registry, "kl-v0001", client, actor="test")  # what students are answered by
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**QUICK, "sft": {**QUICK["sft"], "max_steps": 2}}))  # killed in DPO
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")},
           "CARELOOP_HOME": str(settings.home), "CARELOOP_DATABASE_URL": settings.database_url,
           "CARELOOP_BASE_MODEL": settings.base_model, "CARELOOP_ADAPTER_DIR": str(settings.adapter_dir),
           "CARELOOP_REDIS_URL": redis_server.url}
    process = subprocess.Popen([sys.executable, "-m", "cli", "train", "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        latest = runs.recent_runs(sessions, 1)
        if latest and latest[0].step == "dpo":
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the run never reached the DPO step")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    killed = runs.recent_runs(sessions, 1)[0]
    assert killed.status == "running" and killed.adapter_version is None
    assert registry.live().name == "kl-v0001" and [v.name for v in registry.versions()] == ["kl-v0001"]
    assert client.chat(question, max_tokens=4).model == "kl-v0001", "students are still answered by it"

    # The next run only has to finish: a shorter one keeps the suite quick. The killed run's training
    # lock names a process gone from this host: the next run does not wait for it to lapse.
    config.write_text(yaml.safe_dump({"sft": {**QUICK["sft"], "max_steps": 4}, "dpo": {**QUICK["dpo"], "max_steps": 4},
                                      "eval": {**QUICK["eval"], "max_items": 10, "confirm_items": 10,
                                               "max_pairs": 10}}))
    done = subprocess.run([sys.executable, "-m", "cli", "train", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"run {killed.id + 1}: candidate" in done.stdout or f"run {killed.id + 1}: rejected" in done.stdout
    assert runs.get_run(sessions, killed.id).status == "interrupted"
    listing = subprocess.run([sys.executable, "-m", "cli", "runs"], env={**env, "COLUMNS": "200"},
                             capture_output=True, text=True, timeout=60).stdout
    assert "interrupted" in listing and f"│ {killed.id + 1} " in listing
    # Auto-promote is off: a passing candidate waits for an admin; the live version still answers.
    assert registry.live().name == "kl-v0001"
    assert client.chat(question, max_tokens=4).model == "kl-v0001"
    registry.retire("kl-v0001", actor="test")
    client.unload_adapter("kl-v0001")


def test_a_full_adapter_disk_fails_the_run_with_its_reason_and_resuming_publishes_it(setup, small_disk):
    settings, sessions, registry, _ = setup
    adapters = small_disk / "adapters"
    adapters.mkdir()
    settings = settings.model_copy(update={"adapter_dir": adapters})
    short = TrainConfig.model_validate({"sft": {**QUICK["sft"], "max_steps": 2},
                                        "dpo": {**QUICK["dpo"], "max_steps": 2},
                                        "eval": {**QUICK["eval"], "max_items": 4, "confirm_items": 4, "max_pairs": 4}})
    filler = fill_disk(small_disk)
    with pytest.raises(OSError, match="No space left on device"):
        run_training(settings, short, sessions, registry, None, actor="test")
    (failed,) = runs.recent_runs(sessions, 1)
    assert failed.status == "failed" and failed.step == "publish" and "No space left on device" in failed.error
    assert registry.versions() == [] and list(adapters.iterdir()) == [], "nothing half-published"

    trained = {path: path.stat().st_mtime_ns for step in ("sft-adapter", "adapter")
               for path in (settings.home / "runs" / str(failed.id) / step).iterdir()}
    assert len(trained) >= 4, "SFT and DPO each left an adapter before the publish step failed"

    filler.unlink()  # the administrator makes room and resumes the run: trained steps are not redone
    result = run_training(settings, short, sessions, registry, None, actor="test", resume=failed.id)
    assert {path: path.stat().st_mtime_ns for path in trained} == trained, "SFT and DPO did not run again"
    assert result.run_id == failed.id and result.status in ("candidate", "rejected")
    published = adapters / result.adapter_version
    assert (published / "adapter_config.json").exists() and (published / "README.md").exists()
    assert [p.name for p in adapters.iterdir()] == [result.adapter_version]
    assert registry.get(result.adapter_version).path == str(published)


def test_general_chats_are_mixed_in_at_the_set_ratio(tmp_path):
    from careloop.settings import REPO_ROOT

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Write a haiku {i}"},
                                                        {"role": "assistant", "content": "An old pond."}]}) + "\n"
                               for i in range(100)))
    config = TrainConfig.model_validate({"sft": {"max_examples": 100, "general_data": str(general),
                                                 "general_ratio": 0.2}})
    snapshot = build_snapshot(tmp_path / "snapshot", config, REPO_ROOT / "data" / "seed", None)
    sources = [row["origin"] for row in snapshot.data["sft"]]
    assert sources.count("general") == 25 and len(sources) == 125  # 20% of the mix
