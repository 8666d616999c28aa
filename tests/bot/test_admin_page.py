"""The admin page's logic on a fresh database, the real server and the real broker: confirmations
that say what will happen (and refuse what cannot), training requests, runs with progress,
feedback figures and audited exports."""

from __future__ import annotations

import json
import zipfile

import pandas as pd
import pytest
import redis
from support import fill_disk

from adapters.registry import Registry
from adapters.rollout import open_client
from bot.access import Viewer
from bot.admin import Admin
from bot.admin.feedback import VOLUME_DAYS, count_axis
from bot.errors import UserError
from bot.rendering import literal
from careloop import accounts, audit
from careloop.redis_server import free_port
from feedback import schemas
from feedback.store import store_event
from serving.client import ServingClient
from trainer import runs
from trainer.schedule import DEFAULT_SHARES, training_lock
from trainer.tasks import REQUEST_KEY

ADMIN = Viewer("ad.min", "admin")
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def admin(bot_stack, sessions, tmp_path):
    settings = bot_stack.settings(home=tmp_path / "bot")
    client = ServingClient(bot_stack.server.url, token=settings.resolved_control_token())
    yield Admin(settings, sessions, Registry(sessions, "careloop-demo-tiny"), client)
    client.close()


@SQLITE_ONLY
def test_confirmations_say_what_happens_and_refuse_the_impossible(admin, bot_stack, database_url):
    with pytest.raises(UserError, match="Nothing to roll back"):
        admin.versions.confirmation("rollback", None)
    with pytest.raises(UserError, match="Choose the version to promote"):
        admin.versions.confirmation("promote", "")
    with pytest.raises(UserError, match="no adapter version named 'med-v9999'"):
        admin.versions.confirmation("promote", "med-v9999")
    with pytest.raises(UserError, match="Unknown action"):
        admin.versions.confirmation("delete", "med-v0001")
    admin.registry.register("med-v0001", bot_stack.server.adapter_dir / "med-v0001", actor="test")
    assert "replaces `the base model`" in admin.versions.confirmation("promote", "med-v0001")
    assert admin.versions.act(ADMIN, "promote", "med-v0001") == "`med-v0001` is live (replaced the base model)."
    assert admin.registry.live().name == "med-v0001"
    # What a student's chat then gets: the bot's client reads the live version from the same registry.
    student = open_client(admin.settings.model_copy(update={"database_url": database_url, "live_cache_seconds": 0}))
    question = [{"role": "user", "content": "What is hypertension?"}]
    assert student.chat(question, max_tokens=4).model == "med-v0001", "serving answers with the promoted version"
    with pytest.raises(UserError, match="is live; only candidate or retired"):
        admin.versions.confirmation("promote", "med-v0001")
    with pytest.raises(UserError, match="roll it back"):
        admin.versions.act(ADMIN, "reject", "med-v0001")
    assert "the base model answers" in admin.versions.confirmation("retire", "med-v0001")
    assert admin.versions.act(ADMIN, "retire", "med-v0001") == "`med-v0001` is retired."
    assert student.chat(question, max_tokens=4).model == "careloop-demo-tiny", "the base model answers again"
    student.close()
    with admin.sessions() as session:
        (event,) = [e for e in audit.recent(session) if e.action == "adapter.promote"]
    assert event.actor == "bot:ad.min"
    assert list(admin.versions.table()["status"]) == ["retired"]


@SQLITE_ONLY
def test_runs_show_progress_and_one_training_request_at_a_time_reaches_the_queue(admin, bot_stack):
    """A running run shows its step and percent and refuses a second start, naming it; its process
    gone (lock free), it shows as interrupted. A start request queues one run recorded for the admin;
    a double click is refused, naming who asked and when, and the table shows the request as queued."""
    run_id = runs.start_run(admin.sessions, "beat", {})
    runs.update_run(admin.sessions, run_id, step="dpo")
    with training_lock(bot_stack.redis_url):  # what a live run holds while it works
        row = admin.runs.table().iloc[0]
        assert (row["run"], row["status"], row["step"]) == (run_id, "running", "dpo")
        # dpo comes after snapshot and SFT: their default shares, with no earlier run to time it by
        done = f"{100 * (DEFAULT_SHARES['snapshot'] + DEFAULT_SHARES['sft']):.0f}%"
        assert row["progress"] == done
        with pytest.raises(UserError, match=rf"run {run_id} \(started by beat\) is running: dpo, {done}"):
            admin.runs.start(ADMIN)
    assert admin.runs.table().iloc[0]["status"] == "interrupted", "no process holds its lock: it is not running"
    # Issue 29, 7: a run that passed with auto-promote off said nothing in "why not promoted"
    runs.update_run(admin.sessions, run_id, status="candidate", adapter_version="med-v0042",
                    decision={"promote": True, "reasons": ["PASS safety held"]},
                    data={"pairs": {"train": 9, "eval": 1}, "answers": {"train": 2},
                          "in_flight": {"outbox_events": 0, "queued_batches": 0, "waited_seconds": 3.0}})
    candidate = admin.runs.table().iloc[0]
    assert candidate["why not promoted"].startswith("the gate passed: promote it yourself"), candidate.to_dict()
    # Issue 32, 1: too few clinicians' pairs to judge preference: the admin reads that, not "passed"
    runs.update_run(admin.sessions, run_id, decision={"promote": False, "verdict": "inconclusive", "reasons": [
        "ok safety: held", "INCONCLUSIVE human preference: not enough clinician evidence: 3 held-out clinicians' "
        "pairs, the policy asks for at least 40; an admin may promote it"]})
    assert admin.runs.table().iloc[0]["why not promoted"].startswith(
        "INCONCLUSIVE human preference: not enough clinician evidence: 3 held-out")
    assert candidate["clinicians' data"] == ("9 pairs (+1 held out), 2 corrected or approved answers; "
                                             "none on its way (waited 3 s)")

    broker = redis.Redis.from_url(bot_stack.redis_url)
    before = broker.llen("training")
    try:
        assert "queued" in admin.runs.start(ADMIN)
        assert broker.llen("training") == before + 1
        with pytest.raises(UserError, match=r"requested by ad.min at \d\d:\d\d UTC is already queued"):
            admin.runs.start(ADMIN)  # a double click
        assert broker.llen("training") == before + 1, "one run queued, not two"
        queued = admin.runs.table().iloc[0]
        assert (queued["status"], queued["by"]) == ("queued", "ad.min")
        (task,) = [json.loads(raw) for raw in broker.lrange("training", 0, -1)][before:]
        assert task["headers"]["task"] == "training.run" and "'actor': 'ad.min'" in task["headers"]["kwargsrepr"]
    finally:
        broker.delete("training", REQUEST_KEY)  # no training worker runs in this stack

    admin.settings = admin.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(UserError, match="broker is unreachable"):
        admin.runs.start(ADMIN)


@SQLITE_ONLY
def test_feedback_figures_and_an_audited_export(admin, small_disk):
    comparison = {"prompt": "What lowers blood pressure?", "response_a": "Exercise and less salt.",
                  "response_b": "Nothing.", "version_a": "x", "version_b": "y", "shown_order": "ab",
                  "scores_a": {"accuracy": 5, "helpfulness": 5, "relevance": 5, "comprehensiveness": 4},
                  "scores_b": {"accuracy": 1, "helpfulness": 1, "relevance": 2, "comprehensiveness": 1}}
    for annotator in ("nurse.a", "dr.p"):
        store_event(admin.sessions, schemas.ComparisonEvent(annotator=annotator, choice="a", **comparison))
    store_event(admin.sessions, schemas.ComparisonEvent(annotator="nurse.a", choice="b", **{
        **comparison, "prompt": "What raises blood pressure?"}))
    # A day of data draws something: every day of the window is there (0 where nothing happened), so
    # each kind's line runs up to today's count; the count axes start at 0 and end on a whole number.
    volume = admin.feedback.volume()
    assert len(volume) == VOLUME_DAYS * 4 and volume["count"].dtype.kind == "i"
    assert volume.groupby("kind")["count"].sum().to_dict() == {"questions": 0, "ratings": 0, "judgments": 3,
                                                               "corrections": 0}
    today = volume[volume["day"] == volume["day"].max()].set_index("kind")["count"].to_dict()
    assert today["judgments"] == 3 and volume["day"].nunique() == VOLUME_DAYS
    frame, summary = admin.feedback.annotators()
    assert sorted(frame["annotator"]) == ["dr.p", "nurse.a"] and "Krippendorff's alpha" in summary
    assert dict(zip(frame["annotator"], frame["judgments"], strict=True)) == {"nurse.a": 2, "dr.p": 1}
    assert count_axis(frame["judgments"]) == [0, 10] and count_axis(pd.Series([37])) == [0, 37]
    # No gold items here, and dr.p shares one item with nurse.a: the cells say why they have no figure.
    assert set(frame["gold accuracy"]) == {"n/a (no gold item judged yet)"}
    # The leaderboard of the versions judged (issue 32, 6): x won two of three, with its plot
    standings, plot, note = admin.feedback.leaderboard()
    assert list(standings["version"]) == ["x", "y"] and list(standings["judgments"]) == [3, 3]
    assert list(standings["wins (ties half)"]) == [2.0, 1.0] and plot is not None
    assert note.startswith("Bradley-Terry ratings from 3 clinicians' judgments of two versions")

    archive = admin.exports.export(ADMIN, "dpo", "jsonl")
    with zipfile.ZipFile(archive) as opened:
        assert {"manifest.json", "train.jsonl"} <= set(opened.namelist())
    with admin.sessions() as session:
        (event,) = [e for e in audit.recent(session) if e.action == "feedback.export"]
    assert event.actor == "bot:ad.min"
    with pytest.raises(UserError, match="Unknown export"):
        admin.exports.export(ADMIN, "rlhf", "jsonl")
    with pytest.raises(UserError, match="Unknown export"):
        admin.exports.export(ADMIN, "dpo", "csv")

    # A full disk: the reason on the page, no half-written export left, nothing audited; then it works again.
    admin.settings = admin.settings.model_copy(update={"home": small_disk})
    filler = fill_disk(small_disk)
    for fmt in ("jsonl", "parquet"):
        with pytest.raises(UserError, match=r"could not write it \(No space left on device\)\. Ask whoever"):
            admin.exports.export(ADMIN, "dpo", fmt)
    assert sorted(p.name for p in small_disk.rglob("*")) == ["exports", "filler"]
    filler.unlink()
    with zipfile.ZipFile(admin.exports.export(ADMIN, "dpo", "jsonl")) as opened:
        assert "manifest.json" in opened.namelist()
    with admin.sessions() as session:
        assert len([e for e in audit.recent(session) if e.action == "feedback.export"]) == 2


@SQLITE_ONLY
def test_empty_tables_say_why(admin):
    assert admin.versions.table().empty and admin.versions.note(admin.versions.table()).startswith(
        "No versions yet: the base model answers.")
    assert admin.runs.table().empty and admin.runs.note(admin.runs.table()).startswith("No training runs yet.")
    frame, summary = admin.feedback.annotators()
    assert frame.empty and "n/a (no item has two labels yet)" in summary
    standings, plot, note = admin.feedback.leaderboard()
    assert standings.empty and plot is None and note == "No clinician has compared two versions yet."


@SQLITE_ONLY
def test_accounts_from_the_admin_page_are_audited_like_the_cli(admin):
    """Add (a temporary password shown once), change role, disable, enable and reset, each audited with
    the admin as the actor; an admin cannot lock themselves out, nor leave no enabled admin."""
    accounts.add_user(admin.sessions, "ad.min", "admin", "the admin's password", actor="test")
    shown = admin.accounts.add(ADMIN, " Nurse.Ward ", "nurse")
    password = shown.split("shown once: `")[1].split("`")[0]
    assert shown.startswith("**nurse.ward** added as nurse") and "first sign-in" in shown
    assert accounts.authenticate(admin.sessions, "nurse.ward", password).must_change_password
    row = admin.accounts.table().set_index("username").loc["nurse.ward"]
    assert (row["role"], row["state"]) == ("nurse", "temporary password")
    with pytest.raises(UserError, match="Not done: the username 'nurse.ward' is taken"):
        admin.accounts.add(ADMIN, "nurse.ward", "student")
    with pytest.raises(UserError, match="Not done: role 'doctor' is unknown"):
        admin.accounts.add(ADMIN, "nurse.other", "doctor")

    assert "now physician" in admin.accounts.set_role(ADMIN, "nurse.ward", "physician")
    assert "disabled" in admin.accounts.set_disabled(ADMIN, "nurse.ward", True)
    assert accounts.authenticate(admin.sessions, "nurse.ward", password) is None
    assert "enabled again" in admin.accounts.set_disabled(ADMIN, "nurse.ward", False)
    reset = admin.accounts.reset_password(ADMIN, "nurse.ward")
    again = reset.split("shown once: `")[1].split("`")[0]
    assert accounts.authenticate(admin.sessions, "nurse.ward", password) is None, "the old password stops working"
    assert accounts.authenticate(admin.sessions, "nurse.ward", again).must_change_password
    with admin.sessions() as session:
        events = [(e.actor, e.action, e.target) for e in reversed(audit.recent(session)) if e.target == "nurse.ward"]
    assert events == [("bot:ad.min", action, "nurse.ward") for action in
                      ("user.add", "user.set_role", "user.disable", "user.enable", "user.set_password")]
    assert not [e for e in events if password in str(e) or again in str(e)], "no password in the audit log"

    for act in (lambda: admin.accounts.set_role(ADMIN, "ad.min", "student"),
                lambda: admin.accounts.set_disabled(ADMIN, "AD.MIN", True),
                lambda: admin.accounts.reset_password(ADMIN, "ad.min")):
        with pytest.raises(UserError, match="You cannot .* here: ask another admin"):
            act()
    with pytest.raises(UserError, match="Choose an account first"):
        admin.accounts.set_role(ADMIN, None, "nurse")
    with pytest.raises(UserError, match="Choose the new role first"):
        admin.accounts.set_role(ADMIN, "nurse.ward", None)
    # Another admin demoting the only enabled admin is refused too, on the page; the CLI may.
    other = Viewer("nurse.ward", "admin")
    admin.accounts.set_role(ADMIN, "nurse.ward", "admin")
    admin.accounts.set_disabled(other, "ad.min", True)
    with pytest.raises(UserError, match="nurse.ward is the only enabled admin"):
        admin.accounts.set_role(ADMIN, "nurse.ward", "nurse")
    with pytest.raises(UserError, match="nurse.ward is the only enabled admin"):
        admin.accounts.set_disabled(ADMIN, "nurse.ward", True)


@SQLITE_ONLY
def test_library_documents_are_added_listed_and_removed_with_every_refusal_shown(sessions, small_library_dir, tmp_path):
    """The Library tab's logic: a batch with any bad file adds nothing and says why for each file (the
    page shows this message), a good one is added, audited with the admin as the actor, listed, found
    by the search at once, and removed once confirmed."""
    from support import BAD_FILES, LIMIT

    from careloop.settings import load_settings
    from library.index import Retriever

    settings = load_settings(home=tmp_path / "bot", library_data_dir=small_library_dir,
                             library_index_dir=tmp_path / "index", library_max_document_bytes=LIMIT)
    client = open_client(settings)  # not called: the library needs no model
    admin = Admin(settings, sessions, Registry(sessions, "careloop-demo-tiny"), client)
    retriever = Retriever(settings, sessions, refresh_seconds=0)
    uploads = tmp_path / "uploads"
    uploads.mkdir()

    def upload(name: str, content: bytes | str) -> str:
        (uploads / name).write_bytes(content.encode() if isinstance(content, str) else content)
        return str(uploads / name)

    assert admin.library.table().empty
    assert admin.library.note(admin.library.table()).startswith(
        "No documents added by admins yet; the library also holds 60 MedQuAD pages of the U.S. NIH and CDC")
    notes = upload("ward-protocol.md", "# Ward protocol\n\nZolendronate infusions run over at least 15 minutes.")
    with pytest.raises(UserError) as refused:
        admin.library.add_documents(ADMIN, [notes, *(upload(name, content)
                                                     for name, (content, _) in BAD_FILES.items())])
    shown = str(refused.value).replace("\\", "")  # as the page's Markdown renders it
    assert shown.startswith("**Nothing was added to the library:**\n\n")
    reasons = shown.splitlines()[2:]
    assert len(reasons) == len(BAD_FILES) and all(
        any(line.startswith(f"- {reason}") for line in reasons) for _, reason in BAD_FILES.values()), reasons
    assert admin.library.table().empty and retriever.search("zolendronate infusions") == []
    with pytest.raises(UserError, match="Choose one or more files"):
        admin.library.add_documents(ADMIN, [])

    added = admin.library.add_documents(ADMIN, [notes])
    assert f"document 1: **Ward protocol** ({literal('ward-protocol.md')}, markdown, 1 passages)" in added
    assert "The search index is ready" in added
    row = admin.library.table().iloc[0]
    assert (row["title"], row["file"], row["kind"], row["size"], row["passages"], row["added by"]) == (
        "Ward protocol", "ward-protocol.md", "markdown", "69 B", 1, "bot:ad.min")
    assert admin.library.note(admin.library.table()).startswith("1 document added by admins; the library also")
    assert admin.library.document_choices() == [("1 · Ward protocol (ward-protocol.md)", "1")]
    (passage,) = retriever.search("What does the ward protocol say about zolendronate infusions?")
    assert (passage.doc_id, passage.publisher) == ("doc-1", "added by bot:ad.min (ward-protocol.md)")
    copy = upload("copy.md", (uploads / "ward-protocol.md").read_bytes())
    with pytest.raises(UserError) as refused:
        admin.library.add_documents(ADMIN, [copy])
    assert "copy.md: already in the library as document 1" in str(refused.value).replace("\\", "")

    with pytest.raises(UserError, match="Choose the document to remove"):
        admin.library.removal_confirmation(None)
    assert admin.library.removal_confirmation("1").startswith(
        f"Remove document 1, **Ward protocol** ({literal('ward-protocol.md')}, added")
    assert admin.library.remove_document(ADMIN, "1").startswith("Removed document 1, **Ward protocol**")
    with pytest.raises(UserError, match="There is no document 1 in the library"):
        admin.library.remove_document(ADMIN, "1")
    assert admin.library.table().empty and retriever.search("zolendronate infusions") == []
    with sessions() as session:
        events = [(e.actor, e.action, e.target) for e in reversed(audit.recent(session))
                  if e.action.startswith("library")]
    assert events == [("bot:ad.min", "library.add", "document 1"), ("bot:ad.min", "library.remove", "document 1")]
    client.close()


def test_the_audit_tab_shows_who_did_what_and_filters_by_action(admin):
    """Issue 29, 7: the audit log was written and nowhere to be read on the page."""
    from bot.admin.audit import ALL

    accounts.add_user(admin.sessions, "nurse.audited", "nurse", "long enough password", actor="bot:ad.min")
    accounts.set_role(admin.sessions, "nurse.audited", "physician", actor="cli:root")
    everything = admin.audit.table()
    assert list(everything.columns) == ["when (UTC)", "who", "action", "target", "details"]
    newest = everything.iloc[0]
    assert (newest["who"], newest["action"], newest["target"]) == ("cli:root", "user.set_role", "nurse.audited")
    assert "before: nurse; after: physician" in newest["details"]
    assert {"user.add", "user.set_role"} <= set(admin.audit.actions()) and admin.audit.actions()[0] == ALL
    added = admin.audit.table("user.add")
    assert set(added["action"]) == {"user.add"} and "nurse.audited" in set(added["target"])
    assert admin.audit.table("no.such.action").empty
