"""The admin page's logic, apart from Gradio: adapter versions and their reports, promote / reject /
roll back (confirmed first), training runs, feedback volume and agreement, dataset exports, accounts,
and the admins' documents in the library (added, or removed once confirmed).

Every action goes through the same registry, Celery task, export or account function as the CLI, so
it is audited the same way, with the admin's username as the actor.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path

import pandas as pd
import redis
from sqlalchemy import select, true
from sqlalchemy.orm import Session, sessionmaker

from bot.access import Viewer
from bot.errors import UserError
from careloop import accounts
from careloop.log import get_logger
from careloop.private import private_dir
from careloop.settings import Settings
from feedback.export import ExportConfig, export
from feedback.quality import annotator_quality
from feedback.store import Comparison, Correction, Message, Rating
from library.corpus import medquad_records
from library.documents import DocumentRefused, LibraryDocument, add_documents, documents, remove_document
from library.index import build_or_load
from serving.client import ControlUnsupported, ServingClient, ServingRejected, ServingUnavailable
from serving import rollout
from serving.registry import Registry, RegistryError, Status
from trainer.runs import recent_runs, run_dir
from trainer.schedule import progress, settle_stopped_runs
from trainer.tasks import RunRefused, request_run, requested_run

log = get_logger(__name__)

ACTIONS = ("promote", "reject", "retire", "rollback")
VOLUME_DAYS = 30
VOLUME_KINDS = (("questions", Message, Message.role == "user"), ("ratings", Rating, true()),
                ("judgments", Comparison, true()), ("corrections", Correction, true()))


class Admin:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], registry: Registry,
                 client: ServingClient):
        self.settings = settings
        self.sessions = sessions
        self.registry = registry
        self.client = client

    # ----- adapter versions -----

    def versions(self) -> pd.DataFrame:
        try:
            loaded = self.client.loaded_everywhere()
        except ServingUnavailable:
            loaded = set()
        rows = [{"version": v.name, "status": v.status, "loaded": "yes" if v.name in loaded else "",
                 "parent": v.parent or "", "run": v.training_run_id or "",
                 "created": f"{v.created_at:%Y-%m-%d %H:%M}", "note": v.note}
                for v in reversed(self.registry.versions())]
        return pd.DataFrame(rows, columns=["version", "status", "loaded", "parent", "run", "created", "note"])

    @staticmethod
    def versions_note(versions: pd.DataFrame) -> str:
        return ("No versions yet: the base model answers. A training run that passes the gate adds one "
                "(Training runs tab), or register one with `careloop adapters register`." if versions.empty else "")

    def version_names(self) -> list[str]:
        return [v.name for v in reversed(self.registry.versions())]

    def report(self, name: str | None) -> tuple[str, str | None]:
        """(Markdown, path of the report's figure or None) for version ``name``."""
        if not name:
            return "Choose a version to see its evaluation report.", None
        try:
            version = self.registry.get(name)
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        directory = run_dir(self.settings, version.training_run_id) if version.training_run_id else None
        if directory and (directory / "report.md").is_file():
            figure = directory / "report.png"
            return (directory / "report.md").read_text(), str(figure) if figure.is_file() else None
        card = Path(version.path) / "README.md"
        if card.is_file():
            return card.read_text(), None
        return f"No evaluation report for `{name}` (registered by hand, without a training run).", None

    def confirmation(self, action: str, name: str | None) -> str:
        """What ``action`` would do, for the admin to confirm; raises UserError if it cannot be done."""
        live = self.registry.live()
        if action == "rollback":
            if live is None:
                raise UserError("Nothing to roll back: no version is live (the base model answers).")
            back = f"`{live.replaced}` becomes live again" if live.replaced else "the base model answers again"
            return f"Roll back: {back} and `{live.name}` is rejected."
        if action not in ACTIONS:
            raise UserError(f"Unknown action {action!r}.")
        if not name:
            raise UserError(f"Choose the version to {action}.")
        try:
            status = self.registry.get(name).status
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        if action == "promote":
            if status not in (Status.CANDIDATE, Status.RETIRED):
                raise UserError(f"`{name}` is {status}; only candidate or retired versions can be promoted.")
            return f"Promote `{name}`: it is loaded, smoke-tested, then replaces `{live.name if live else 'the base model'}`."
        if action == "reject" and status == Status.LIVE:
            raise UserError(f"`{name}` is live: roll it back (or promote another) instead of rejecting it.")
        if action == "retire" and status == Status.LIVE:
            return f"Retire `{name}`: the base model answers until another version is promoted."
        return f"{action.capitalize()} `{name}` (now {status})."

    def act(self, viewer: Viewer, action: str, name: str | None, reason: str = "") -> str:
        self.confirmation(action, name)  # re-checked: the state may have changed since the dialog
        actor = f"bot:{viewer.username}"
        try:
            if action == "promote":
                done = rollout.promote(self.registry, name, self.client, actor=actor)
                message = f"`{done.live}` is live (replaced {done.previous or 'the base model'})."
            elif action == "rollback":
                done = rollout.rollback(self.registry, self.client, actor=actor, reason=reason or f"rolled back by {viewer.username}")
                message = f"Rolled back: `{done.live}` answers again; `{done.previous}` is rejected."
            elif action == "reject":
                self.registry.reject(name, actor=actor, reason=reason or f"rejected by {viewer.username}")
                message = f"`{name}` is rejected."
            else:
                self.registry.retire(name, actor=actor)
                message = f"`{name}` is retired."
        except (RegistryError, ServingRejected, ServingUnavailable, ControlUnsupported) as exc:
            raise UserError(f"{action} failed: {exc}") from None
        rollout.unload_replaced(self.registry, self.client, self.settings.promotion_grace_seconds, background=True)
        return message

    # ----- training -----

    def runs(self) -> pd.DataFrame:
        rows = []
        settle_stopped_runs(self.sessions, self.settings.redis_url)
        try:
            queued = requested_run(self.settings.redis_url)
        except redis.RedisError:  # Redis away: the table still shows the stored runs
            queued = None
        if queued is not None:
            rows.append({"run": "", "status": "queued", "step": "", "progress": "", "eta": "",
                         "started": f"{queued.requested_at:%Y-%m-%d %H:%M}", "by": queued.actor, "version": "",
                         "why not promoted": ""})
        for run in recent_runs(self.sessions, limit=20):
            done = progress(self.sessions, run)
            eta = f"{done.eta_seconds:.0f} s" if done.eta_seconds else ""
            reasons = [r for r in (run.decision or {}).get("reasons", []) if r.startswith("FAIL")]
            rows.append({"run": run.id, "status": run.status, "step": done.step_label, "progress": f"{done.percent:.0f}%",
                         "eta": eta, "started": f"{run.started_at:%Y-%m-%d %H:%M}", "by": run.actor,
                         "version": run.adapter_version or "", "why not promoted": "; ".join(reasons)[:300]})
        return pd.DataFrame(rows, columns=["run", "status", "step", "progress", "eta", "started", "by", "version",
                                           "why not promoted"])

    @staticmethod
    def runs_note(runs: pd.DataFrame) -> str:
        if runs.empty:
            return ("No training runs yet. Beat starts one when enough new clinician judgments have arrived "
                    "(CARELOOP_TRAIN_MIN_NEW_PAIRS), or start one here.")
        if runs["status"].isin(["queued", "running"]).any():
            return "The table follows the run every few seconds while this tab is open."
        return ""

    def start_training(self, viewer: Viewer) -> str:
        try:
            request_run(self.settings, self.sessions, viewer.username)
        except RunRefused as exc:
            raise UserError(f"Not started: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - redis and kombu raise several transport errors
            raise UserError(f"Could not queue a training run: the broker is unreachable ({exc.__class__.__name__}).") from None
        log.info("training_requested", actor=viewer.username)
        return "Training run queued: the training worker starts it when it is free; the table shows its progress."

    # ----- accounts -----

    def account_table(self) -> pd.DataFrame:
        rows = [{"username": u.username, "role": u.role,
                 "state": "disabled" if u.disabled else "temporary password" if u.must_change_password else "active",
                 "created": f"{u.created_at:%Y-%m-%d %H:%M}"} for u in accounts.users(self.sessions)]
        return pd.DataFrame(rows, columns=["username", "role", "state", "created"])

    def usernames(self) -> list[str]:
        return [u.username for u in accounts.users(self.sessions)]

    def add_account(self, viewer: Viewer, username: str | None, role: str | None) -> str:
        """Create an account with a generated temporary password; the message shows it, once."""
        password = accounts.new_password()
        with _account_errors():
            user = accounts.add_user(self.sessions, username or "", role or "", password,
                                     actor=f"bot:{viewer.username}", temporary=True)
        return (f"**{user.username}** added as {user.role}. Temporary password, shown once: `{password}`. "
                "Hand it over in person; they choose their own at the first sign-in.")

    def set_role(self, viewer: Viewer, username: str | None, role: str | None) -> str:
        name = self._other_account(viewer, username, "change your own role")
        if not role:  # no default: a click on "Change role" must not demote anyone to a preset role
            raise UserError("Choose the new role first.")
        with _account_errors():
            accounts.set_role(self.sessions, name, role or "", actor=f"bot:{viewer.username}", keep_an_admin=True)
        return f"**{name}** is now {role}; it applies to their next click."

    def set_disabled(self, viewer: Viewer, username: str | None, disabled: bool) -> str:
        name = self._other_account(viewer, username, "disable your own account")
        with _account_errors():
            accounts.set_disabled(self.sessions, name, disabled, actor=f"bot:{viewer.username}", keep_an_admin=True)
        return (f"**{name}** is disabled: signed-in pages are refused from their next click." if disabled
                else f"**{name}** is enabled again.")

    def reset_password(self, viewer: Viewer, username: str | None) -> str:
        name = self._other_account(viewer, username, "reset your own password")
        password = accounts.new_password()
        with _account_errors():
            accounts.set_password(self.sessions, name, password, actor=f"bot:{viewer.username}", temporary=True)
        return (f"New temporary password for **{name}**, shown once: `{password}`. Their old one no longer "
                "works; they choose their own at the next sign-in.")

    @staticmethod
    def _other_account(viewer: Viewer, username: str | None, what: str) -> str:
        name = accounts.normalize_username(username or "")
        if not name:
            raise UserError("Choose an account first.")
        if name == viewer.username:  # an admin locking themselves out of the page they are using
            raise UserError(f"You cannot {what} here: ask another admin, or use `careloop users` on the server.")
        return name

    # ----- library -----

    def library_table(self) -> pd.DataFrame:
        rows = [{"id": d.id, "title": d.title, "file": d.filename, "kind": d.kind, "size": _size(d.size_bytes),
                 "passages": d.passages, "added by": d.added_by, "added": f"{d.created_at:%Y-%m-%d %H:%M}"}
                for d in documents(self.sessions)]
        return pd.DataFrame(rows, columns=["id", "title", "file", "kind", "size", "passages", "added by", "added"])

    def library_note(self, table: pd.DataFrame) -> str:
        """What the library holds besides the table: the shipped MedQuAD pages, and what may be added."""
        try:
            shipped = (f"{self._shipped_pages:,} MedQuAD pages of the U.S. NIH and CDC shipped with careloop "
                       "(CC BY 4.0)")
        except (OSError, ValueError) as exc:
            shipped = f"no shipped pages: {exc}"
        mine = ("No documents added by admins yet" if table.empty
                else f"{len(table)} document{'s' if len(table) > 1 else ''} added by admins")
        return (f"{mine}; the library also holds {shipped}. Add course notes as Markdown (.md), text (.txt) or "
                f"PDF (.pdf), at most {_size(self.settings.library_max_document_bytes)} each: answers cite them "
                "within seconds.")

    @cached_property
    def _shipped_pages(self) -> int:  # parsing the shipped file takes a moment: once per process
        return len(medquad_records(self.settings.library_data_dir))

    def document_choices(self) -> list[tuple[str, str]]:
        return [(f"{d.id} · {d.title} ({d.filename})", str(d.id)) for d in documents(self.sessions)]

    def add_documents(self, viewer: Viewer, paths: list[str] | None) -> str:
        """Add the uploaded files to the library, all or none (``UserError`` lists each refused file
        and why), audited with the admin as the actor; the search index is rebuilt."""
        if not paths:
            raise UserError("Choose one or more files to add: Markdown (.md), text (.txt) or PDF (.pdf).")
        try:
            added = add_documents(self.sessions, [Path(path) for path in paths], f"bot:{viewer.username}",
                                  self.settings.library_max_document_bytes)
        except DocumentRefused as exc:
            raise UserError("**Nothing was added to the library:**\n\n" + "\n".join(
                f"- {_escaped(line)}" for line in str(exc).splitlines())) from None
        listed = "\n".join(f"- document {d.id}: **{_escaped(d.title)}** ({_escaped(d.filename)}, {d.kind}, "
                           f"{d.passages} passages)" for d in added)
        return f"Added to the library:\n\n{listed}\n\n{self._reindexed()}"

    def removal_confirmation(self, document_id: str | None) -> str:
        document = self._document(document_id)
        return (f"Remove document {document.id}, **{_escaped(document.title)}** ({_escaped(document.filename)}, "
                f"added by {_escaped(document.added_by)}): answers stop citing it within seconds.")

    def remove_document(self, viewer: Viewer, document_id: str | None) -> str:
        document = self._document(document_id)
        try:
            remove_document(self.sessions, document.id, f"bot:{viewer.username}")
        except DocumentRefused as exc:  # removed by someone else since the dialog
            raise UserError(f"Not removed: {exc}.") from None
        return (f"Removed document {document.id}, **{_escaped(document.title)}** ({_escaped(document.filename)}). "
                f"{self._reindexed()}")

    def _document(self, document_id: str | None) -> LibraryDocument:
        if not document_id:
            raise UserError("Choose the document to remove.")
        found = next((d for d in documents(self.sessions) if str(d.id) == str(document_id)), None)
        if found is None:
            raise UserError(f"There is no document {document_id} in the library (removed already?).")
        return found

    def _reindexed(self) -> str:
        """The search index rebuilt for the library as it is now, as `careloop library add` does; each
        process's retriever loads it at its next check (every few seconds)."""
        try:
            library = build_or_load(self.settings, self.sessions)
        except OSError as exc:
            log.error("library_reindex_failed", error=str(exc)[:300])
            return (f"The search index could not be rebuilt now ({exc.strerror or exc}); the chat rebuilds it at "
                    "its next question.")
        return f"The search index is ready ({len(library.chunks):,} passages)."

    # ----- feedback -----

    def volume(self) -> pd.DataFrame:
        """Events per day over the last VOLUME_DAYS days (today included), by kind; a day without events
        counts 0, so the line plot draws lines even when everything happened today (one point per
        series draws nothing)."""
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=back) for back in range(VOLUME_DAYS - 1, -1, -1)]
        since = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
        counts: Counter[tuple[date, str]] = Counter()
        with self.sessions() as session:
            for kind, table, extra in VOLUME_KINDS:
                for moment in session.scalars(select(table.created_at).where(table.created_at >= since, extra)):
                    counts[(moment.date(), kind)] += 1
        rows = [{"day": pd.Timestamp(day), "kind": kind, "count": counts[(day, kind)]}
                for day in days for kind, _, _ in VOLUME_KINDS]
        return pd.DataFrame(rows, columns=["day", "kind", "count"])

    def annotators(self) -> tuple[pd.DataFrame, str]:
        report = annotator_quality(self.sessions)
        rows = [{"annotator": s.annotator, "judgments": s.labels, "skipped": s.skipped,
                 "gold accuracy": _percent(s.gold_accuracy, "n/a (no gold item judged yet)"),
                 "agreement": _percent(s.agreement, "n/a (not enough shared items)"),
                 "median seconds": s.median_seconds if s.median_seconds is not None else "n/a"}
                for s in report.annotators]
        frame = pd.DataFrame(rows, columns=["annotator", "judgments", "skipped", "gold accuracy", "agreement",
                                            "median seconds"])
        alpha = f"{report.alpha:.2f}" if report.alpha is not None else "n/a (no item has two labels yet)"
        kappas = ", ".join(f"{a} / {b}: {k:.2f} over {n}" for (a, b), (k, n) in report.kappas.items()
                           if k is not None) or "none yet"
        summary = (f"Krippendorff's alpha over {report.overlapping_items} items judged by two or more: **{alpha}**. "
                   f"Cohen's kappa per pair: {kappas}.")
        return frame, summary

    def export(self, viewer: Viewer, kind: str, fmt: str) -> str:
        """Export a dataset; returns the path of a zip with the files and the manifest."""
        if kind not in ("sft", "dpo", "kto") or fmt not in ("jsonl", "parquet", "hf"):
            raise UserError(f"Unknown export {kind!r} / {fmt!r}: choose sft, dpo or kto as jsonl, parquet or hf.")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        out = private_dir(self.settings.home / "exports") / f"{stamp}-{kind}"
        try:
            export(self.sessions, ExportConfig(kind), out, fmt, actor=f"bot:{viewer.username}")
            archive = Path(shutil.make_archive(str(out), "zip", out))
            archive.chmod(0o600)  # the copy Gradio serves keeps this mode
            return str(archive)
        except ValueError as exc:
            raise UserError(f"Export failed: {exc}") from None
        except OSError as exc:
            Path(f"{out}.zip").unlink(missing_ok=True)  # a zip cut short by a full disk
            raise UserError(f"Export failed: the server could not write it ({exc.strerror or exc}). Ask whoever "
                            "runs careloop to free space on its disk, then export again.") from None


@contextmanager
def _account_errors() -> Iterator[None]:
    try:
        yield
    except accounts.AccountError as exc:
        raise UserError(f"Not done: {exc}.") from None


def count_axis(counts: pd.Series) -> list[float]:
    """The y range of a plot of counts: from 0 (Gradio's plots start at the smallest value, so one
    count alone draws a bar of no height) to at least 10, so the ticks fall on whole numbers."""
    return [0, max(10, int(counts.max())) if len(counts) else 10]


def _size(size_bytes: int) -> str:
    if size_bytes >= 2**20:
        return f"{size_bytes / 2**20:.1f} MiB"
    return f"{size_bytes / 1024:.1f} KiB" if size_bytes >= 1024 else f"{size_bytes} B"


def _escaped(text: str) -> str:
    """``text`` shown as written in Markdown (a file name like ``__init__.md`` is not bold)."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


def _percent(value: float | None, missing: str) -> str:
    return f"{value:.0%}" if value is not None else missing
