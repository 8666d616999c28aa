"""A training run asked for by hand (the admin page's button): one at a time, recorded for who asked,
trained by a real training worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from support import migrated_sqlite, tiny_train_config

from careloop.settings import load_settings
from trainer import runs
from trainer.tasks import RunRefused, request_run, requested_run


def test_a_requested_run_trains_once_for_who_asked_and_a_second_request_is_refused(
        tmp_path, redis_server, tiny_model_dir):
    url, sessions = migrated_sqlite(tmp_path)
    config = tiny_train_config(tmp_path / "train.yaml", steps=3, examples=60, pairs=12, eval_items=6)
    redis_url = redis_server.url.replace("/0", "/6")
    settings = load_settings(home=tmp_path / "home", database_url=url, redis_url=redis_url,
                             base_model=str(tiny_model_dir), train_config=config)

    request = request_run(settings, sessions, "dr.admin")
    assert requested_run(redis_url) == request
    with pytest.raises(RunRefused,
                       match=rf"requested by dr.admin at {request.requested_at:%H:%M} UTC is already queued"):
        request_run(settings, sessions, "dr.other")  # the button pressed twice, or by two admins

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")},
           "CARELOOP_HOME": str(tmp_path / "home"), "CARELOOP_DATABASE_URL": url, "CARELOOP_REDIS_URL": redis_url,
           "CARELOOP_BASE_MODEL": str(tiny_model_dir), "CARELOOP_TRAIN_CONFIG": str(config),
           "CARELOOP_ANSWER_MAX_TOKENS": "8", "CARELOOP_DECODING_TEMPERATURE": "0"}
    log = tmp_path / "worker.log"
    with log.open("a") as out:
        worker = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--queues", "training"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            latest = runs.recent_runs(sessions, 1)
            if latest and latest[0].status != "running":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the requested run did not finish within 300 s; worker log:\n{log.read_text()[-3000:]}")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    (run,) = runs.recent_runs(sessions)
    assert run.actor == "dr.admin" and run.status in ("candidate", "rejected"), (run.actor, run.status, run.error)
    assert requested_run(redis_url) is None, "started: the request no longer blocks the next one"
    request_run(settings, sessions, "dr.other")  # accepted now
