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

OUTBOX_KEY = "careloop:outbox:"  # + the producer's id: events its outbox holds (sent or not, not yet stored)
QUEUE = "feedback"


@dataclass(frozen=True)
class InFlight:
    outbox_events: int  # in the bots' outboxes, not yet confirmed stored
    queued_batches: int  # ingest batches in the feedback queue or being stored
    waited_seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return self.outbox_events == 0 and self.queued_batches == 0

    def describe(self) -> str:
        if self.empty:
            return "nothing on its way"
        return (f"{self.outbox_events} event{'s' * (self.outbox_events != 1)} in the bots' outboxes and "
                f"{self.queued_batches} batch{'es' * (self.queued_batches != 1)} queued for the store")


def report_outbox(client: redis.Redis, producer_id: str, events: int, ttl_seconds: float) -> None:
    """What one bot's outbox holds now (``FeedbackProducer`` calls it after each flush)."""
    client.set(OUTBOX_KEY + producer_id, events, px=max(1, int(ttl_seconds * 1000)))


def in_flight(client: redis.Redis) -> InFlight:
    keys = list(client.scan_iter(OUTBOX_KEY + "*", count=100))
    outboxes = sum(int(value) for value in client.mget(keys) if value) if keys else 0
    return InFlight(outboxes, client.llen(QUEUE) + _unacked(client))


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
                return InFlight(now.outbox_events, now.queued_batches, round(waited, 1))
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
