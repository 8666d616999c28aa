"""What the bot calls to record feedback: validated, sent to the `feedback` queue, never lost.

Each call validates its event (``InvalidFeedback`` names the bad fields, for the UI), gives it a
client-made UUID and writes it to a local SQLite outbox, then returns. A background sender
publishes the outbox, oldest first, to Celery; while Redis is unreachable events simply wait.
An event leaves the outbox only when the store has it: a broker that accepted an event and then
lost it (a crash before its AOF write, a flushed or replaced Redis) gets it again after
``resend_after`` seconds. Storing is idempotent on the UUID, so a resend never duplicates.
Importing this module never imports torch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError as BrokerError

from careloop.log import get_logger
from careloop.private import private_file
from careloop.queues import producer
from careloop.settings import Settings
from feedback import schemas
from feedback.deidentify import warm_up
from feedback.in_flight import report_outbox
from feedback.tasks import INGEST_BATCH

log = get_logger(__name__)

InvalidFeedback = schemas.InvalidFeedback
CONFIRM_INTERVAL = 2.0  # seconds between checks of the store for sent events


class FeedbackUnavailable(Exception):
    """The event could not be written to the outbox (its disk is full or unwritable), so it was not
    accepted; the message is fit to show, and the caller keeps what the user entered."""


class AlreadySubmitted(Exception):
    """The outbox already holds an event with this id (the same judgment sent from another tab):
    nothing new was recorded."""


class Outbox:
    """Events on their way to the broker, in a local SQLite file (WAL: a submit costs well under a
    millisecond and survives a crash of the process), oldest first."""

    def __init__(self, path: Path):
        self.path = private_file(path)  # 0600 before SQLite opens it; its -wal and -shm follow
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        # Delivered events are overwritten on disk when deleted, not left in free pages (events
        # written by a version that did not scrub before the outbox held raw text).
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "event_id TEXT UNIQUE NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, sent_at REAL)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "sent_at" not in columns:  # an outbox written before sends were confirmed
            self._db.execute("ALTER TABLE outbox ADD COLUMN sent_at REAL")
        if "added_at" not in columns:  # an outbox written before its age was reported
            self._db.execute("ALTER TABLE outbox ADD COLUMN added_at REAL")

    def add(self, kind: str, payload: dict[str, Any]) -> bool:
        """Queue the event; False if one with its id is already here (a resend)."""
        with self._lock:
            return self._db.execute("INSERT OR IGNORE INTO outbox (event_id, kind, payload, added_at) "
                                    "VALUES (?, ?, ?, ?)", (payload["event_id"], kind, json.dumps(payload),
                                                            time.time())).rowcount == 1

    def unsent(self, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, kind, payload FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                                    (limit,)).fetchall()
        return [(seq, kind, json.loads(payload)) for seq, kind, payload in rows]

    def mark_sent(self, seqs: list[int], when: float) -> None:
        with self._lock:
            self._db.executemany("UPDATE outbox SET sent_at = ? WHERE seq = ?", [(when, seq) for seq in seqs])

    def sent_before(self, moment: float) -> list[tuple[int, str, str, float]]:
        """(seq, kind, event_id, sent_at) of events published before ``moment``."""
        with self._lock:
            return self._db.execute("SELECT seq, kind, event_id, sent_at FROM outbox WHERE sent_at < ? ORDER BY seq",
                                    (moment,)).fetchall()

    def remove(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def resend(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.executemany("UPDATE outbox SET sent_at = NULL WHERE seq = ?", [(seq,) for seq in seqs])

    def turns(self, user: str) -> list[dict[str, Any]]:
        """``user``'s chat messages still here (not yet stored), oldest first, as their events' fields."""
        with self._lock:
            rows = self._db.execute("SELECT payload FROM outbox WHERE kind = 'turn' AND "
                                    "json_extract(payload, '$.user') = ? ORDER BY seq", (user,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def judged_items(self, annotator: str) -> set[int]:
        """The review items ``annotator`` judged whose judgments are still here (not yet stored)."""
        with self._lock:
            rows = self._db.execute("SELECT json_extract(payload, '$.review_item_id') FROM outbox "
                                    "WHERE kind = 'comparison' AND json_extract(payload, '$.annotator') = ?",
                                    (annotator,)).fetchall()
        return {row[0] for row in rows if row[0] is not None}

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def oldest(self) -> float | None:
        """When the oldest event still here was added (epoch seconds); None when empty."""
        with self._lock:
            return self._db.execute("SELECT min(coalesce(added_at, sent_at, 0)) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class FeedbackProducer:
    """Submit calls write the event to the outbox and return; a background thread sends what the
    outbox holds to the `feedback` queue in batches (one task per batch, stored in one
    transaction), oldest first, and keeps retrying while Redis is down."""

    def __init__(self, settings: Settings, flush_interval: float = 1.0, batch_size: int = 200,
                 resend_after: float | None = None):
        self.celery = producer(settings)
        self.outbox = Outbox(settings.outbox_path or settings.home / "outbox.db")
        self.database_url = settings.resolved_database_url
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.resend_after = settings.feedback_resend_seconds if resend_after is None else resend_after
        self._last_confirm = 0.0
        self._id = uuid.uuid4().hex  # this producer's outbox, as feedback.in_flight counts it
        self._redis_url = settings.redis_url
        self._reporter: redis.Redis | None = None
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_forever, name="careloop-outbox", daemon=True)
        self._flusher.start()
        # The name recogniser takes seconds to load: not on the first submit.
        threading.Thread(target=warm_up, name="careloop-deidentify-warm-up", daemon=True).start()

    # ----- the four events -----

    def submit_comparison(self, **fields: Any) -> uuid.UUID:
        """A side-by-side judgment (see ``schemas.ComparisonEvent``). Raises ``AlreadySubmitted`` when a
        judgment with this event id is still on its way (the same item judged in another tab)."""
        event_id, new = self._submit("comparison", fields)
        if not new:
            raise AlreadySubmitted(str(event_id))
        return event_id

    def submit_rating(self, **fields: Any) -> uuid.UUID:
        """Thumbs up/down on an answer (see ``schemas.RatingEvent``)."""
        return self._submit("rating", fields)[0]

    def submit_correction(self, **fields: Any) -> uuid.UUID:
        """A clinician's corrected answer (see ``schemas.CorrectionEvent``)."""
        return self._submit("correction", fields)[0]

    def log_turn(self, **fields: Any) -> uuid.UUID:
        """One chat message, question or answer (see ``schemas.MessageEvent``; kind "turn" on the wire)."""
        return self._submit("turn", fields)[0]

    # ----- delivery -----

    def _submit(self, kind: str, fields: dict[str, Any]) -> tuple[uuid.UUID, bool]:
        """The event's id, and whether the outbox took it as new (False: a resend of one it holds).
        Its free text is scrubbed of identifiers first: raw text never reaches the disk."""
        event = schemas.parse_event(kind, schemas.scrubbed(schemas.parse_event(kind, fields)).model_dump())
        try:
            new = self.outbox.add(kind, event.model_dump(mode="json"))
        except sqlite3.Error as exc:  # SQLITE_FULL, a read-only or vanished disk: refused, never half-kept
            log.error("outbox_write_failed", kind=kind, path=str(self.outbox.path), error=str(exc))
            raise FeedbackUnavailable(
                "It could not be saved: this server cannot write to its disk right now (it may be full). "
                "Nothing was recorded; keep your work on the page and try again in a minute, and tell your "
                "administrator if it persists.") from None
        self._wake.set()
        return event.event_id, new

    def flush(self) -> int:
        """Send what waits unsent in the outbox, oldest first, until none is left or Redis fails.
        Returns how many events went."""
        sent = 0
        with self._flush_lock:
            while batch := self.outbox.unsent(self.batch_size):
                events = [(kind, payload) for _, kind, payload in batch]
                try:
                    self.celery.send_task(INGEST_BATCH, args=(events,), queue="feedback", retry=False)
                except (BrokerError, OSError) as exc:
                    log.warning("broker_unreachable_events_wait_in_outbox", waiting=len(self.outbox),
                                error=exc.__class__.__name__)
                    break
                # Marked after publishing: a crash in between sends them twice, and ingest ignores replays.
                self.outbox.mark_sent([seq for seq, _, _ in batch], time.time())
                sent += len(batch)
        return sent

    def confirm(self, now: float | None = None) -> tuple[int, int]:
        """Drop from the outbox the sent events the store has; mark for resending those sent more
        than ``resend_after`` seconds ago that it still lacks. Returns (confirmed, resent)."""
        from careloop.db import sessions_for
        from feedback.store import stored_event_ids

        now = time.time() if now is None else now
        pending = self.outbox.sent_before(now)
        if not pending:
            return 0, 0
        stored = stored_event_ids(sessions_for(self.database_url),
                                  [(kind, event_id) for _, kind, event_id, _ in pending])
        confirmed = [seq for seq, _, event_id, _ in pending if event_id in stored]
        lost = [seq for seq, _, event_id, sent_at in pending
                if event_id not in stored and now - sent_at > self.resend_after]
        self.outbox.remove(confirmed)
        if lost:
            log.warning("events_not_stored_resending", events=len(lost), after_seconds=self.resend_after)
            self.outbox.resend(lost)
        return len(confirmed), len(lost)

    def close(self) -> None:
        """Stop the background sender after one last attempt; undelivered events stay in the outbox."""
        self._closed = True
        self._wake.set()
        self._flusher.join(timeout=30)
        self.outbox.close()

    def _flush_forever(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
                if time.monotonic() - self._last_confirm >= CONFIRM_INTERVAL:
                    self._last_confirm = time.monotonic()
                    self.confirm()
            except Exception:  # noqa: BLE001 - the sender must outlive any one failure (the database may be down)
                log.exception("outbox_flush_failed")
            self._report()

    def _report(self) -> None:
        """Tell Redis what this outbox holds (``feedback.in_flight``: a training run waits for it)."""
        try:
            if self._reporter is None:
                self._reporter = redis.Redis.from_url(self._redis_url, socket_timeout=2)
            report_outbox(self._reporter, self._id, len(self.outbox), self.outbox.oldest(),
                          ttl_seconds=max(10.0, 5 * self.flush_interval))
        except (redis.RedisError, OSError, sqlite3.Error):
            pass  # Redis away: nothing can be on its way through it; the flush above logs the outage
