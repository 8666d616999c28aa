"""Feedback on its way to the store: events still in the bots' outboxes and batches queued for (or
held by) the feedback worker.

A training run waits for them before its snapshot, within a bound it records (issue 29, 2: a run
started while a nurse's judgments were queued behind a review fill trained on none of them), and the
admin page shows them. Each bot's outbox reports its size to Redis every second or so under a key
that expires, so a bot that stopped is not counted for ever (its outbox sends the rest when it starts
again). Importing this module never imports torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

OUTBOX_KEY = "careloop:outbox:"  # + the producer's id: {"events", "oldest"} of its outbox (not yet stored)
QUEUE = "feedback"
LATE_SECONDS = 60.0  # an event older than this still on its way: storing is behind (doctor and the Admin page say so)
BACKED_UP_BATCHES = 20  # more ingest batches than this waiting: the feedback worker is behind or down


@dataclass(frozen=True)
class InFlight:
    outbox_events: int  # in the bots' outboxes, not yet confirmed stored
    queued_batches: int  # ingest batches in the feedback queue or being stored
    waited_seconds: float = 0.0
    oldest_seconds: float | None = None  # how long the oldest event in an outbox has been on its way

    @property
    def empty(self) -> bool:
        return self.outbox_events == 0 and self.queued_batches == 0

    @property
    def behind(self) -> bool:
        """Storing is behind: an event has waited over a minute, or the queue backs up."""
        return (self.oldest_seconds or 0) > LATE_SECONDS or self.queued_batches > BACKED_UP_BATCHES

    def describe(self) -> str:
        if self.empty:
            return "nothing on its way"
        oldest = f" (oldest {self.oldest_seconds:.0f} s)" if self.oldest_seconds else ""
        return (f"{self.outbox_events} event{'s' * (self.outbox_events != 1)} in outboxes{oldest}, "
                f"{self.queued_batches} batch{'es' * (self.queued_batches != 1)} queued")


def report_outbox(client: redis.Redis, producer_id: str, events: int, oldest: float | None,
                  ttl_seconds: float) -> None:
    """What one bot's outbox holds now, and since when (``FeedbackProducer`` calls it after each flush)."""
    client.set(OUTBOX_KEY + producer_id, json.dumps({"events": events, "oldest": oldest}),
               px=max(1, int(ttl_seconds * 1000)))


def in_flight(client: redis.Redis) -> InFlight:
    keys = list(client.scan_iter(OUTBOX_KEY + "*", count=100))
    reports = [json.loads(value) for value in client.mget(keys) if value] if keys else []
    oldest = min((report["oldest"] for report in reports if report.get("events") and report.get("oldest")),
                 default=None)
    return InFlight(sum(report.get("events", 0) for report in reports), client.llen(QUEUE) + _unacked(client),
                    oldest_seconds=None if oldest is None else round(time.time() - oldest, 1))


def wait_until_stored(redis_url: str, timeout_seconds: float, poll_seconds: float = 0.5) -> InFlight:
    """Wait up to ``timeout_seconds`` for the feedback on its way to be stored; what was still on its
    way then (empty when all of it arrived), with the time waited. Redis unreachable: nothing can be
    on its way through it, and nothing is waited for."""
    started = time.monotonic()
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        while True:
            try:
                now = in_flight(client)
            except redis.RedisError:
                return InFlight(0, 0, time.monotonic() - started)
            waited = time.monotonic() - started
            if now.empty or waited >= timeout_seconds:
                return InFlight(now.outbox_events, now.queued_batches, round(waited, 1), now.oldest_seconds)
            time.sleep(poll_seconds)
    finally:
        client.close()


def _unacked(client: redis.Redis) -> int:
    """Feedback batches a worker has taken and not yet acknowledged (Celery's Redis transport keeps
    them in the ``unacked`` hash, each with its routing key, until the task finished)."""
    held = 0
    for raw in client.hvals("unacked"):
        try:
            held += json.loads(raw)[2] == QUEUE
        except (ValueError, IndexError, TypeError):
            continue
    return held
