"""What the bot calls to record feedback: validated, sent to the `feedback` queue, never lost.

Each call validates its event (``InvalidFeedback`` names the bad fields, for the UI), gives it a
client-made UUID and publishes it to Celery. When Redis is unreachable the event goes to a local
SQLite outbox and the call still returns at once; a background flusher delivers the outbox, in
order, when the broker is back. Storing is idempotent on the UUID, so a resend never duplicates.
Importing this module never imports torch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from kombu.exceptions import OperationalError as BrokerError

from careloop.log import get_logger
from careloop.settings import Settings
from feedback import schemas
from feedback.celery_app import producer

log = get_logger(__name__)

InvalidFeedback = schemas.InvalidFeedback


class Outbox:
    """Events waiting for the broker, in a local SQLite file (one row per event, oldest first)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                               "event_id TEXT UNIQUE NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def add(self, kind: str, payload: dict[str, Any]) -> None:
        with self._connect() as connection:
            connection.execute("INSERT OR IGNORE INTO outbox (event_id, kind, payload) VALUES (?, ?, ?)",
                               (payload["event_id"], kind, json.dumps(payload)))

    def oldest(self, limit: int = 100) -> list[tuple[int, str, dict[str, Any]]]:
        with self._connect() as connection:
            rows = connection.execute("SELECT seq, kind, payload FROM outbox ORDER BY seq LIMIT ?", (limit,))
            return [(seq, kind, json.loads(payload)) for seq, kind, payload in rows]

    def remove(self, seq: int) -> None:
        with self._connect() as connection:
            connection.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        with self._connect() as connection:
            return connection.execute("SELECT count(*) FROM outbox").fetchone()[0]


class FeedbackAPI:
    def __init__(self, settings: Settings, flush_interval: float = 2.0):
        self.celery = producer(settings)
        self.outbox = Outbox(settings.home / "outbox.db")
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        if len(self.outbox):
            self._start_flusher()

    # ----- the four events -----

    def submit_comparison(self, **fields: Any) -> uuid.UUID:
        """A side-by-side judgment (see ``schemas.Comparison``)."""
        return self._submit("comparison", fields)

    def submit_rating(self, **fields: Any) -> uuid.UUID:
        """Thumbs up/down on an answer (see ``schemas.Rating``)."""
        return self._submit("rating", fields)

    def submit_correction(self, **fields: Any) -> uuid.UUID:
        """A clinician's corrected answer (see ``schemas.Correction``)."""
        return self._submit("correction", fields)

    def log_turn(self, **fields: Any) -> uuid.UUID:
        """One chat message, question or answer (see ``schemas.Turn``)."""
        return self._submit("turn", fields)

    # ----- delivery -----

    def _submit(self, kind: str, fields: dict[str, Any]) -> uuid.UUID:
        event = schemas.parse_event(kind, fields)
        payload = event.model_dump(mode="json")
        with self._lock:
            # While older events wait in the outbox, newer ones queue behind them to keep the order.
            if len(self.outbox) or not self._publish(kind, payload):
                self.outbox.add(kind, payload)
                self._start_flusher()
        return event.event_id

    def _publish(self, kind: str, payload: dict[str, Any]) -> bool:
        try:
            self.celery.send_task("feedback.ingest", args=(kind, payload), task_id=payload["event_id"],
                                  queue="feedback", retry=False)
        except (BrokerError, OSError) as exc:
            log.warning("broker_unreachable_event_to_outbox", kind=kind, error=exc.__class__.__name__)
            return False
        return True

    def flush(self) -> int:
        """Send what waits in the outbox, oldest first; stop at the first failure. Returns how many went."""
        sent = 0
        while batch := self.outbox.oldest():
            for seq, kind, payload in batch:
                if not self._publish(kind, payload):
                    return sent
                # Removed after publishing: a crash in between resends it, and ingest ignores the replay.
                self.outbox.remove(seq)
                sent += 1
        return sent

    def _start_flusher(self) -> None:
        if self._flusher is not None and self._flusher.is_alive():
            return
        self._flusher = threading.Thread(target=self._flush_until_empty, name="careloop-outbox", daemon=True)
        self._flusher.start()

    def _flush_until_empty(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.flush_interval):
            with self._lock:
                sent = self.flush()
                if sent:
                    log.info("outbox_flushed", events=sent, waiting=len(self.outbox))
                if not len(self.outbox):
                    return
