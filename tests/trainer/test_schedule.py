"""When training runs: the due check, the one-run lock (also after a crash), progress and ETA,
and beat + a real worker running a scheduled training end to end."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from processes import wait_for
from support import migrated_sqlite, tiny_train_config

from feedback import schemas
from feedback.store import store_event
from trainer import runs
from trainer.schedule import LOCK_NAME, Busy, is_due, lock_held, lock_holder, progress, training_lock

SCORES = {"accuracy": 3, "helpfulness": 3, "relevance": 3, "comprehensiveness": 3}


def _label(sessions, choice: str) -> None:
    store_event(sessions, schemas.ComparisonEvent(annotator="n", prompt="Is 140/90 high?", response_a="Yes.",
                                             response_b="No.", version_a="x", version_b="y", shown_order="ab",
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
        with pytest.raises(Busy, match=rf"holds the lock \(pid {os.getpid()} on {socket.gethostname()}\)"), \
                training_lock(redis_server.url):
            pass
    code = ("import time, sys; from trainer.schedule import training_lock\n"
            f"with training_lock({redis_server.url!r}):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Busy, match=f"pid {holder.pid} on"), training_lock(redis_server.url):
        pass
    assert lock_holder(redis_server.url).startswith(f"{socket.gethostname()}:{holder.pid}:")
    holder.kill()  # SIGKILL: no release. Its process is gone from this host: the lock is free at once
    holder.wait()
    assert not lock_held(redis_server.url)
    with training_lock(redis_server.url):
        pass

    # A holder on another host cannot be checked from here: its lock lapses on its own.
    client = redis.Redis.from_url(redis_server.url)
    client.set(LOCK_NAME, "trainer-2:4242:nonce", px=2000)
    with pytest.raises(Busy, match=r"pid 4242 on trainer-2"), training_lock(redis_server.url):
        pass
    time.sleep(2.5)
    assert not lock_held(redis_server.url)
    with training_lock(redis_server.url):
        pass
    client.close()


def test_a_run_keeps_its_lock_across_a_redis_restart_that_lost_it(tmp_path):
    """Redis restarted without persistence forgets the lock mid-run: the run takes it back, so a
    check does not take the live run for a killed one and start a second beside it."""
    from careloop.redis_server import start_local_redis

    server = start_local_redis(tmp_path / "redis", appendonly=False)
    try:
        with training_lock(server.url, seconds=1.5):
            server.stop()
            server = start_local_redis(tmp_path / "redis", port=server.port, appendonly=False)
            assert not lock_held(server.url), "a fresh Redis without persistence"
            wait_for(lambda: lock_held(server.url), timeout=5, message="the run to take its lock back")
            with pytest.raises(Busy), training_lock(server.url):
                pass
        assert not lock_held(server.url), "released at the end"
    finally:
        server.stop()


def test_a_run_left_running_without_its_lock_counts_as_stopped_and_its_labels_count_again(sessions):
    """What the due check decides about a run still marked running: while the lock is held it is
    running; once the lock is gone (its worker was SIGKILLed: the real kill is in
    test_beat_and_a_worker_train_when_labels_arrive_also_after_the_worker_is_killed_mid_run) it was
    stopped, and the labels it never learned from make training due again (it used to wait for it forever)."""
    _label(sessions, "a")
    _label(sessions, "b")
    killed = runs.start_run(sessions, "schedule", {})
    assert is_due(sessions, 2, timedelta(hours=24), lock_held=True).reason == f"run {killed} is still running"
    due = is_due(sessions, 2, timedelta(hours=24), lock_held=False)
    assert due.due and due.reason == f"2 new accepted labels (threshold 2) (run {killed} was stopped)"
    next_run = runs.start_run(sessions, "schedule", {})  # what the queued run does first
    assert runs.get_run(sessions, killed).status == "interrupted"
    runs.update_run(sessions, next_run, status="candidate")
    assert not is_due(sessions, 2, timedelta(hours=24), lock_held=False).due, "learned from: they count no more"
    by_hand = runs.start_run(sessions, "dr.admin", {})  # `careloop train` holds the lock too
    assert is_due(sessions, 2, timedelta(hours=24), lock_held=True).reason == f"run {by_hand} is still running"
    assert is_due(sessions, 2, timedelta(hours=24), lock_held=False).reason.endswith(f"(run {by_hand} was stopped)")


def test_a_scheduled_run_queued_twice_trains_once(tmp_path, redis_server, tiny_model_dir, library_index_dir):
    """Two checks found training due while the training worker was away, and each queued a
    `training.run`: a real worker then takes both, one trains, the other finds nothing new (or the
    lock held) and skips without starting a run."""
    from processes import start_worker

    from careloop.queues import producer
    from careloop.settings import load_settings
    from trainer.tasks import RUN

    url, sessions = migrated_sqlite(tmp_path)
    _label(sessions, "a")
    config = tiny_train_config(tmp_path / "train.yaml", steps=2, examples=40, pairs=12, eval_items=4)
    broker_url = redis_server.url.replace("/0", "/4")
    redis.Redis.from_url(broker_url).flushdb()
    queue = producer(load_settings(home=tmp_path / "checks", database_url=url, redis_url=broker_url))
    queued = [queue.send_task(RUN, kwargs={"scheduled": True}, queue="training").id for _ in range(2)]
    worker = start_worker(tmp_path / "worker", url, broker_url, queues="training", base_model=str(tiny_model_dir),
                          train_min_new_pairs="1", train_config=str(config), library_index_dir=str(library_index_dir),
                          answer_max_tokens="8", decoding_temperature="0",
                          retrieval_top_k="2", retrieval_passage_chars="150")
    try:
        def results() -> dict[str, list[str]]:
            """What each queued task returned (a task prefetched past the visibility timeout while the
            first one trained is handed out again, and skips again: it may show twice)."""
            done = {task: [] for task in queued}
            for line in worker.log.read_text().splitlines():
                for task in queued:
                    if f"Task {RUN}[{task}] succeeded" in line:
                        done[task].append(line.split(": ", 1)[-1])
            return done

        wait_for(lambda: all(results().values()), timeout=300,
                 message=f"both queued runs to finish; worker log:\n{worker.log.read_text()[-3000:]}")
        (trained,) = runs.recent_runs(sessions)
        assert trained.status in ("candidate", "rejected") and trained.actor == "schedule"
        assert trained.adapter_version is not None
        outcomes = sorted(("skipped" if "'status': 'skipped'" in r else "trained", r)
                          for rs in results().values() for r in rs)
        assert [o for o, _ in outcomes].count("trained") == 1, outcomes
        assert all("0 of 1 new labels" in r or "holds the lock" in r for o, r in outcomes if o == "skipped"), outcomes
    finally:
        worker.stop()


def test_careloop_train_runs_beside_no_other_run(tmp_path, redis_server, cli):
    """`careloop train` by hand takes the same lock as the training worker: while a run holds it,
    it is refused naming the holder and starts nothing; with Redis away it says so, password hidden."""
    from careloop import db
    from careloop.redis_server import free_port

    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    env = {"CARELOOP_HOME": str(tmp_path / "home"), "CARELOOP_DATABASE_URL": url,
           "CARELOOP_REDIS_URL": redis_server.url}
    with training_lock(redis_server.url):
        refused = cli("train", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert (f"another training run holds the lock (pid {os.getpid()} on {socket.gethostname()}): careloop trains "
            "one run at a time; `careloop runs` shows it.") in " ".join(refused.stderr.split())
    assert runs.recent_runs(db.session_factory(db.make_engine(url))) == [], "no run started"

    away = cli("train", env={**env, "CARELOOP_REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"})
    assert away.returncode == 1 and "Traceback" not in away.stderr, away.stderr
    said = " ".join(away.stderr.split())
    assert "takes the one-run-at-a-time training lock in Redis at redis://:***@127.0.0.1:" in said, said
    assert "hunter2" not in said


def test_progress_and_eta_come_from_the_last_finished_run(sessions):
    first = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, first, status="candidate", finished_at=datetime.now(UTC),
                    timings={"snapshot": 10, "sft": 50, "dpo": 30, "evaluate": 10, "total": 100})
    second = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, second, step="dpo", started_at=datetime.now(UTC) - timedelta(seconds=70))
    now = progress(sessions, runs.get_run(sessions, second))
    assert now.step == "dpo" and now.percent == pytest.approx(60.0)
    assert now.eta_seconds == pytest.approx(30, abs=3) and now.eta_label == "under a minute"
    # Issue 29, 7: the time left as people say it, not "2421 s"
    assert [dataclasses.replace(now, eta_seconds=seconds).eta_label for seconds in (2421, 840, 7200, 0)] == [
        "about 40 min", "about 14 min", "about 2.0 h", ""]


def test_beat_and_a_worker_train_when_labels_arrive_also_after_the_worker_is_killed_mid_run(
        tmp_path, redis_server, tiny_model_dir):
    """Beat and a real training worker train once labels arrive. The worker SIGKILLed mid-run (with
    its pool): the run never promotes, is marked interrupted, and a new worker trains a fresh run
    once (the killed holder's lock is set aside: its process is gone)."""
    url, sessions = migrated_sqlite(tmp_path)
    config = tiny_train_config(tmp_path / "train.yaml", steps=5, examples=100, pairs=40, eval_items=8)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")},
           "CARELOOP_HOME": str(tmp_path / "home"), "CARELOOP_DATABASE_URL": url,
           "CARELOOP_REDIS_URL": redis_server.url.replace("/0", "/3"), "CARELOOP_BASE_MODEL": str(tiny_model_dir),
           "CARELOOP_TRAIN_MIN_NEW_PAIRS": "1", "CARELOOP_TRAIN_CHECK_INTERVAL_SECONDS": "2",
           "CARELOOP_ANSWER_MAX_TOKENS": "8", "CARELOOP_DECODING_TEMPERATURE": "0",
           "CARELOOP_REVIEW_FILL_INTERVAL_SECONDS": "3600", "CARELOOP_TRAIN_CONFIG": str(config),
           # A run outlasts Redis's visibility timeout (a GPU run outlasts the default hour): it must
           # still run once, not again when the broker hands the unacknowledged task back.
           "CARELOOP_CELERY_VISIBILITY_TIMEOUT": "2"}
    log = (tmp_path / "worker.log").open("a")

    def start(*command: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cli", *command], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_run(done: Callable[[runs.TrainingRun], bool], what: str) -> runs.TrainingRun:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            latest = runs.recent_runs(sessions, 1)
            if latest and done(latest[0]):
                return latest[0]
            time.sleep(0.5)
        pytest.fail(f"{what} within 240 s; worker log:\n{(tmp_path / 'worker.log').read_text()[-3000:]}")

    worker, beat = start("worker", "--queues", "training"), start("beat")
    try:
        time.sleep(5)
        assert runs.recent_runs(sessions) == []  # no new labels: nothing to learn from
        _label(sessions, "a")
        killed = wait_for_run(lambda run: run.step in ("sft", "dpo"), "no run reached training")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
        worker = start("worker", "--queues", "training")
        latest = wait_for_run(lambda run: run.id != killed.id and run.status != "running", "no fresh run finished")
        assert latest.status in ("candidate", "rejected") and latest.actor == "schedule"
        assert latest.adapter_version is not None
        assert runs.get_run(sessions, killed.id).status == "interrupted"
        assert runs.get_run(sessions, killed.id).adapter_version is None
        time.sleep(8)  # later checks find no new labels, and no redelivered task: no third run
        assert len(runs.recent_runs(sessions)) == 2, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        for process in (beat, worker):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def test_progress_moves_within_a_step_and_its_eta_follows_the_steps_pace(sessions):
    """Without any finished run to time it by: the current step's own pace, scaled by default shares;
    with one: its timings for later steps, the current pace for this one."""
    from trainer.schedule import DEFAULT_SHARES

    run = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, run, step="sft")
    tracker = runs.StepProgress(sessions, run, interval=0)
    tracker.start("sft", 16)
    started = runs.get_run(sessions, run).progress["started"]
    tracker.advance(to=4)
    early = progress(sessions, runs.get_run(sessions, run), now=started + 40)  # 4 of 16 steps in 40 s
    assert early.step_label == "sft 4/16"
    assert early.percent == pytest.approx(100 * (DEFAULT_SHARES["snapshot"] + DEFAULT_SHARES["sft"] / 4))
    sft_total = 160.0
    later_steps = sum(DEFAULT_SHARES[s] for s in ("dpo", "evaluate", "gate", "publish")) / DEFAULT_SHARES["sft"]
    assert early.eta_seconds == pytest.approx(sft_total - 40 + sft_total * later_steps)
    tracker.advance(to=12)
    late = progress(sessions, runs.get_run(sessions, run), now=started + 120)
    assert late.percent > early.percent and late.eta_seconds < early.eta_seconds

    runs.finish_run(sessions, run, status="candidate",
                    timings={"snapshot": 5, "sft": 100, "dpo": 40, "evaluate": 50, "total": 195})
    second = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, second, step="evaluate")
    tracker = runs.StepProgress(sessions, second, interval=0)
    tracker.start("evaluate", 100)
    tracker.advance(50)
    half = progress(sessions, runs.get_run(sessions, second),
                    now=runs.get_run(sessions, second).progress["started"] + 30)
    assert half.step_label == "evaluate 50/100" and half.eta_seconds == pytest.approx(30)  # 60 s at this pace
    assert half.percent == pytest.approx(100 * (5 + 100 + 40 + 30) / (5 + 100 + 40 + 60))


class _Clock:
    """The run's clock, moved by the test: StepProgress times each kind of work by it."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_evaluations_eta_times_answers_and_scoring_passes_apart(sessions, monkeypatch):
    """Issue 29, 7: the evaluation mixes generated answers (seconds each) and scoring passes (a fraction
    of that); one pace for both put the time left off by a median 70% on the real model. Each kind has
    its own pace; a kind not timed yet is costed from the other; answers read from the cache take no
    time and do not speed the pace up."""
    from trainer.evaluate import ANSWERS, PASSES
    from trainer.schedule import DEFAULT_SHARES, UNIT_COSTS

    clock = _Clock()
    monkeypatch.setattr(runs.time, "time", clock)
    run = runs.start_run(sessions, "t", {})
    runs.update_run(sessions, run, step="evaluate")
    tracker = runs.StepProgress(sessions, run, interval=0)
    tracker.start("evaluate", {ANSWERS: 100, PASSES: 200})
    later_steps = (DEFAULT_SHARES["gate"] + DEFAULT_SHARES["publish"]) / DEFAULT_SHARES["evaluate"]

    def time_left() -> float:
        return progress(sessions, runs.get_run(sessions, run), now=clock.now).eta_seconds

    clock.now += 32
    tracker.advance(16, kind=ANSWERS)  # 2 s an answer; no pass timed yet
    expected = 84 * 2 + 200 * 2 * UNIT_COSTS[PASSES] / UNIT_COSTS[ANSWERS]
    assert time_left() == pytest.approx(expected + (32 + expected) * later_steps)
    for _ in range(100):  # 0.1 s a pass
        clock.now += 0.1
        tracker.advance(1, kind=PASSES)
    assert time_left() == pytest.approx(84 * 2 + 100 * 0.1 + (42 + 178) * later_steps)
    one_pace = 42 / (116 / 300) - 42  # what the done fraction alone said: about 66 s, not 178
    assert time_left() > 2 * one_pace
    tracker.advance(30, kind=ANSWERS, timed=False)  # from the cache, at once
    assert time_left() == pytest.approx(54 * 2 + 100 * 0.1 + (42 + 118) * later_steps)
    shown = progress(sessions, runs.get_run(sessions, run), now=clock.now)
    assert shown.step_label == "evaluate 146/300"


def test_listings_show_a_run_whose_process_is_gone_as_interrupted_not_running(sessions, redis_server, cli):
    """After everything stopped, `careloop runs` must not claim a killed run is still running (it
    used to until the next run started); a run that holds the lock is left running."""
    from trainer.schedule import settle_stopped_runs

    alive = runs.start_run(sessions, "schedule", {})
    with training_lock(redis_server.url):
        settle_stopped_runs(sessions, redis_server.url)
    assert runs.get_run(sessions, alive).status == "running", "its lock is held: it is working"
    settle_stopped_runs(sessions, redis_server.url)  # the lock is free: nobody is running it
    stopped = runs.get_run(sessions, alive)
    assert stopped.status == "interrupted" and "stopped before it finished" in stopped.error
    assert stopped.finished_at is not None


def test_careloop_runs_marks_a_dead_run_interrupted(cli, redis_server, tmp_path):
    env = {"CARELOOP_HOME": str(tmp_path / "home"), "CARELOOP_REDIS_URL": redis_server.url}
    assert cli("db", "upgrade", env=env).returncode == 0
    from careloop.db import sessions_for

    sessions = sessions_for(f"sqlite:///{tmp_path / 'home' / 'careloop.db'}")
    dead = runs.start_run(sessions, "schedule", {})  # its process was SIGKILLed: no lock, status running
    listing = cli("runs", env=env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if f"│ {dead} " in line)
    assert row.split("│")[2].strip() == "interrupted", listing.stdout
