"""Data files are their owner's alone, and raw text never reaches the disk: the database, the
outbox and exports are created 0600 in 0700 directories under the usual umask 022, and the outbox
holds scrubbed text only."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from support import label

from careloop.redis_server import free_port
from careloop.settings import load_settings
from feedback.export import ExportConfig, export
from feedback.producer import FeedbackProducer

RAW = ("John Smith", "44829173", "415-555-0199", "john.smith@example.com", "03/14/1962")
QUESTION = ("I'm John Smith, MRN 44829173, DOB 03/14/1962. Call 415-555-0199 or john.smith@example.com: "
            "can I take ibuprofen 400 mg with lisinopril 10 mg?")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _usual_umask():
    previous = os.umask(0o022)  # what most systems give a user: new files world-readable
    yield
    os.umask(previous)


def test_the_database_and_its_journal_are_owner_only(cli, tmp_path):
    home = tmp_path / "home"
    assert cli("db", "upgrade", env={"CARELOOP_HOME": str(home)}).returncode == 0
    files = sorted(home.glob("careloop.db*"))
    assert home / "careloop.db" in files
    assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
    assert _mode(home) == 0o700


def test_the_outbox_is_owner_only_and_holds_no_raw_text(tmp_path):
    # Redis is not there: the event stays in the outbox, as it does whenever the broker is down.
    settings = load_settings(home=tmp_path / "bot", redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             database_url=f"sqlite:///{tmp_path / 'store.db'}")
    api = FeedbackProducer(settings, flush_interval=0.1)
    try:
        api.log_turn(conversation_id=uuid.uuid4(), user="stu.dent", role="user", content=QUESTION)
        (_, _, payload), = api.outbox.unsent(10)
        files = sorted((tmp_path / "bot").glob("outbox.db*"))
        assert len(files) == 3, files  # the database, its write-ahead log and its shared memory
        assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}
        on_disk = b"".join(path.read_bytes() for path in files)
    finally:
        api.close()
    assert payload["content"].startswith("I'm [NAME], MRN [ID], [DOB]. Call [PHONE] or [EMAIL]")
    assert "400 mg" in payload["content"] and "10 mg" in payload["content"]
    assert b"[NAME]" in on_disk
    for identifier in RAW:
        assert identifier.encode() not in on_disk, identifier


def test_an_export_is_owner_only(sessions, tmp_path):
    label(sessions, None, "nurse.a", "a")
    out = tmp_path / "exports" / "dpo"
    export(sessions, ExportConfig("dpo", eval_fraction=0), out, "jsonl", actor="test")
    assert _mode(out) == 0o700
    written = list(out.rglob("*"))
    assert {p.name for p in written} >= {"train.jsonl", "eval.jsonl", "manifest.json"}
    assert all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in written), [(p, oct(_mode(p))) for p in written]
