"""When training runs: the due check, the one-run lock (also after a crash), progress and ETA,
and beat + a real worker running a scheduled training end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from feedback import schemas
from feedback.store import store_event
from trainer import runs
from trainer.schedule import Busy, is_due, lock_held, progress, training_lock

SCORES = {"accuracy": 3, "helpfulness": 3, "relevance": 3, "comprehensiveness": 3}


def _label(sessions, choice: str) -> None:
    store_event(sessions, schemas.Comparison(annotator="n", prompt="Is 140/90 high?", response_a="Yes.",
                                             response_b="No.", source_a="x", source_b="y", shown_order="ab",
                                             choice=choice, scores_a=SCORES, scores_b=SCORES))


def test_training_is_due_after_enough_new_labels_or_enough_time(sessions):
    assert not is_due(sessions, 2, timedelta(hours=24)).due
    _label(sessions, "a")
    _label(sessions, "tie")  # a tie is no preference: it does not count
    assert not is_due(sessions, 2, timedelta(hours=24)).due
    _label(sessions, "b")
    assert is_due(sessions, 2, timedelta(hours=24)).reason == "2 new accepted labels (threshold 2)"
    run_id = runs.start_run(sessions, "test", {})
    assert is_due(sessions, 2, timedelta(hours=24)).reason == f"run {run_id} is still running"
    runs.update_run(sessions, run_id, status="candidate", started_at=datetime.now(UTC) - timedelta(hours=25))
    assert is_due(sessions, 10, timedelta(hours=24)).reason.startswith("1 day, 0:00:00 since run")
    assert not is_due(sessions, 10, timedelta(hours=48)).due


def test_one_run_at_a_time_and_a_crashed_holder_releases_the_lock(redis_server):
    with training_lock(redis_server.url):
        with pytest.raises(Busy), training_lock(redis_server.url):
            pass
    code = ("import time, sys; from trainer.schedule import training_lock\n"
            f"with training_lock({redis_server.url!r}, seconds=2):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Busy), training_lock(redis_server.url):
        pass
    assert lock_held(redis_server.url)
    holder.kill()  # SIGKILL: no release; the lock must lapse on its own
    holder.wait()
    time.sleep(2.5)
    assert not lock_held(redis_server.url)
    with training_lock(redis_server.url):
        pass


def test_a_scheduled_run_killed_with_its_worker_blocks_nothing_and_its_labels_count_again(sessions):
    """The training worker SIGKILLed mid-run leaves the run marked running; once its lock lapsed,
    the next check must train again (it used to wait for that run forever)."""
    _label(sessions, "a")
    _label(sessions, "b")
    killed = runs.start_run(sessions, "schedule", {})
    assert is_due(sessions, 2, timedelta(hours=24), lock_held=True).reason == f"run {killed} is still running"
    due = is_due(sessions, 2, timedelta(hours=24), lock_held=False)
    assert due.due and due.reason == f"2 new accepted labels (threshold 2) (run {killed} stopped with its worker)"
    next_run = runs.start_run(sessions, "schedule", {})  # what the queued run does first
    assert runs.get_run(sessions, killed).status == "interrupted"
    runs.update_run(sessions, next_run, status="candidate")
    assert not is_due(sessions, 2, timedelta(hours=24), lock_held=False).due, "learned from: they count no more"
    by_hand = runs.start_run(sessions, "dr.admin", {})  # `careloop train` runs without the lock
    assert is_due(sessions, 2, timedelta(hours=24), lock_held=False).reason == f"run {by_hand} is still running"


def test_a_scheduled_run_queued_twice_trains_once(tmp_path, redis_server, monkeypatch):
    """Checks that found training due while the training worker was away each queued a run: the
    first trains, the ones after it find nothing new and skip without starting a run."""
    from careloop import db
    from careloop.settings import get_settings
    from trainer import tasks

    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    sessions = db.session_factory(db.make_engine(url))
    for name, value in {"HOME": str(tmp_path / "home"), "DATABASE_URL": url, "REDIS_URL": redis_server.url,
                        "TRAIN_MIN_NEW_PAIRS": "1"}.items():
        monkeypatch.setenv(f"CARELOOP_{name}", value)
    get_settings.cache_clear()
    try:
        first = runs.start_run(sessions, "schedule", {})  # the first queued run, finished
        runs.update_run(sessions, first, status="candidate", finished_at=datetime.now(UTC))
        assert tasks.run.run(scheduled=True) == {"status": "skipped", "reason": "0 of 1 new labels"}
        assert [r.id for r in runs.recent_runs(sessions)] == [first]
    finally:
        get_settings.cache_clear()


def test_progress_and_eta_come_from_the_last_finished_run(sessions):
    first = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, first, status="candidate", finished_at=datetime.now(UTC),
                    timings={"snapshot": 10, "sft": 50, "dpo": 30, "evaluate": 10, "total": 100})
    second = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, second, step="dpo", started_at=datetime.now(UTC) - timedelta(seconds=70))
    now = progress(sessions, runs.get_run(sessions, second))
    assert now.step == "dpo" and now.percent == pytest.approx(60.0)
    assert now.eta_seconds == pytest.approx(30, abs=3)


def test_beat_and_a_worker_train_when_labels_arrive(tmp_path, redis_server, tiny_model_dir):
    from careloop import db

    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    sessions = db.session_factory(db.make_engine(url))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"sft": {"max_steps": 5, "max_examples": 100, "max_length": 128},
                                      "dpo": {"max_steps": 5, "max_length": 128, "max_pairs": 40},
                                      "eval": {"max_items": 8, "max_new_tokens": 8}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")},
           "CARELOOP_HOME": str(tmp_path / "home"), "CARELOOP_DATABASE_URL": url,
           "CARELOOP_REDIS_URL": redis_server.url.replace("/0", "/3"), "CARELOOP_BASE_MODEL": str(tiny_model_dir),
           "CARELOOP_TRAIN_MIN_NEW_PAIRS": "1", "CARELOOP_TRAIN_CHECK_INTERVAL_SECONDS": "2",
           "CARELOOP_REVIEW_FILL_INTERVAL_SECONDS": "3600", "CARELOOP_TRAIN_CONFIG": str(config),
           # A run outlasts Redis's visibility timeout (a GPU run outlasts the default hour): it must
           # still run once, not again when the broker hands the unacknowledged task back.
           "CARELOOP_CELERY_VISIBILITY_TIMEOUT": "2"}
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("worker", "beat")}
    worker = subprocess.Popen([sys.executable, "-m", "careloop", "worker", "--queues", "training"], env=env,
                              stdout=logs["worker"], stderr=subprocess.STDOUT)
    beat = subprocess.Popen([sys.executable, "-m", "careloop", "beat"], env=env, stdout=logs["beat"],
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(5)
        assert runs.recent_runs(sessions) == []  # no new labels: nothing to learn from
        _label(sessions, "a")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            latest = runs.recent_runs(sessions, 1)
            if latest and latest[0].status != "running":
                break
            time.sleep(1)
        else:
            pytest.fail(f"no finished run in 240 s; worker log:\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        assert latest[0].status in ("candidate", "rejected") and latest[0].actor == "schedule"
        assert latest[0].adapter_version is not None
        time.sleep(8)  # later checks find no new labels, and no redelivered task: no second run
        assert len(runs.recent_runs(sessions)) == 1, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        for process in (beat, worker):
            process.terminate()
            process.wait(30)
