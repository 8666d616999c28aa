"""Feedback ingest benchmark: careloop's path against a naive one-task-per-event path, in one run.

    .venv/bin/python bench/feedback.py [--events 5000] [--repeat 2] [--database-url URL]

Both paths feed the same real `careloop worker` on a private Redis and the same database:
  naive:    the caller publishes one Celery task per event; the worker commits one transaction
            per event (`feedback.ingest`),
  careloop: `FeedbackProducer` writes the event to its local outbox and returns; a background sender
            publishes batches (`feedback.ingest_batch`), committed one transaction per batch.
Prints sustained events/s from the first submit to the last committed row (ratio target >= 2x),
submit latency p50/p95 seen by the caller (target p95 < 10 ms), and lost/duplicated events
(target 0: rows are counted by the event ids submitted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import func, select  # noqa: E402

from careloop import db  # noqa: E402
from careloop.log import configure_logging  # noqa: E402
from careloop.queues import producer  # noqa: E402
from careloop.redis_server import start_local_redis  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from feedback.producer import FeedbackProducer  # noqa: E402
from feedback.store import Message  # noqa: E402
from feedback.tasks import INGEST  # noqa: E402


def start_worker(home: Path, database_url: str, redis_url: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    env.update({"CARELOOP_HOME": str(home), "CARELOOP_DATABASE_URL": database_url, "CARELOOP_REDIS_URL": redis_url,
                "CARELOOP_LOG_LEVEL": "WARNING"})
    log = home / "worker.log"
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--queues", "feedback"], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    app = producer(load_settings(home=home, redis_url=redis_url))
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return process
    process.kill()
    raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")


def event(conversation: uuid.UUID, index: int) -> dict:
    return {"conversation_id": conversation, "user": "bench", "role": "user",
            "content": f"Is a resting heart rate of {50 + index % 60} normal for an adult? (question {index})"}


def committed(sessions, ids: list[uuid.UUID]) -> tuple[int, int]:
    """(distinct submitted events stored, rows stored for them)"""
    distinct = rows = 0
    with sessions() as session:
        for start in range(0, len(ids), 500):
            chunk = Message.event_id.in_(ids[start:start + 500])
            distinct += session.scalar(select(func.count(func.distinct(Message.event_id))).where(chunk))
            rows += session.scalar(select(func.count()).select_from(Message).where(chunk))
    return distinct, rows


def wait_committed(sessions, ids: list[uuid.UUID], timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if committed(sessions, ids)[0] >= len(ids):
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"only {committed(sessions, ids)[0]} of {len(ids)} events arrived in {timeout} s")


def run_naive(settings, sessions, count: int) -> tuple[float, list[float], int]:
    app = producer(settings)
    conversation = uuid.uuid4()
    ids, latencies = [], []
    started = time.perf_counter()
    for index in range(count):
        event_id = uuid.uuid4()
        payload = {**event(conversation, index), "conversation_id": str(conversation), "event_id": str(event_id)}
        t = time.perf_counter()
        app.send_task(INGEST, args=("turn", payload), queue="feedback")
        latencies.append(time.perf_counter() - t)
        ids.append(event_id)
    done = wait_committed(sessions, ids)
    return count / (done - started), latencies, committed(sessions, ids)


def run_careloop(settings, sessions, count: int) -> tuple[float, list[float], int]:
    api = FeedbackProducer(settings)
    conversation = uuid.uuid4()
    ids, latencies = [], []
    started = time.perf_counter()
    for index in range(count):
        t = time.perf_counter()
        ids.append(api.log_turn(**event(conversation, index)))
        latencies.append(time.perf_counter() - t)
    done = wait_committed(sessions, ids)
    api.close()
    return count / (done - started), latencies, committed(sessions, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2, help="alternating naive/careloop rounds")
    parser.add_argument("--database-url", help="default: a SQLite file (WAL) in a temporary directory")
    args = parser.parse_args()
    configure_logging("WARNING")

    work = Path(tempfile.mkdtemp(prefix="careloop-bench-feedback-"))
    database_url = args.database_url or f"sqlite:///{work / 'careloop.db'}"
    db.upgrade(database_url)
    sessions = db.session_factory(db.make_engine(database_url))
    redis = start_local_redis(work / "redis")
    worker = start_worker(work / "worker", database_url, redis.url)
    settings = load_settings(home=work / "api", database_url=database_url, redis_url=redis.url)
    results = {"naive": [], "careloop": []}
    try:
        run_careloop(settings, sessions, 200)  # warm-up
        for _ in range(args.repeat):
            for name, run in (("naive", run_naive), ("careloop", run_careloop)):
                results[name].append(run(settings, sessions, args.events))
    finally:
        worker.terminate()
        worker.wait(30)
        redis.stop()

    print(f"{args.events} events per round, {args.repeat} rounds each, database {database_url.split(':')[0]}")
    print(f"{'round':<6} {'naive ev/s':>11} {'careloop ev/s':>14} {'ratio':>7}  {'submit p50/p95 ms naive':>24}  "
          f"{'careloop':>14}  {'lost/dup':>9}")
    for index, (naive, ours) in enumerate(zip(results["naive"], results["careloop"], strict=True), start=1):
        def pct(latencies: list[float]) -> str:
            q = statistics.quantiles(latencies, n=20)
            return f"{statistics.median(latencies) * 1e3:.2f} / {q[18] * 1e3:.2f}"
        lost = sum(args.events - r[2][0] for r in (naive, ours))
        duplicated = sum(r[2][1] - r[2][0] for r in (naive, ours))
        print(f"{index:<6} {naive[0]:>11.0f} {ours[0]:>14.0f} {ours[0] / naive[0]:>6.2f}x  {pct(naive[1]):>24}  "
              f"{pct(ours[1]):>14}  {lost:>4} / {duplicated}")


if __name__ == "__main__":
    main()
