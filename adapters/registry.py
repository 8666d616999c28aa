"""The adapter registry: every LoRA version ever trained, and which one is live.

The table ``adapter_versions`` is the source of truth for what students are answered by.
A partial unique index lets at most one version per base model be ``live``, so two admins
promoting at once cannot both win. Status moves:

    candidate -> live -> retired      (promoted, later replaced)
    candidate -> rejected             (failed the gate, or an admin said no)
    live -> rejected                  (rolled back: its predecessor is live again)
    retired -> live                   (promoted again, or restored by a rollback)

This module keeps the table and its status transitions, each one transaction with its audit
row; what serving has loaded is ``adapters.rollout``'s business (it loads and smoke-tests a version
before the flip here, and unloads the replaced one after a grace period).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from careloop import audit
from careloop.db import Base, sessions_for, transaction, utcnow
from careloop.log import get_logger
from careloop.settings import Settings

log = get_logger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Status(StrEnum):
    CANDIDATE = "candidate"
    LIVE = "live"
    REJECTED = "rejected"
    RETIRED = "retired"


PROMOTABLE = (Status.CANDIDATE, Status.RETIRED)
OUT_OF_USE = (Status.RETIRED, Status.REJECTED)


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why and what to do instead."""


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        Index("uq_adapter_versions_one_live", "base_model", unique=True,
              sqlite_where=text("status = 'live'"), postgresql_where=text("status = 'live'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    base_model: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(1024))
    parent: Mapped[str | None] = mapped_column(String(64))
    training_run_id: Mapped[int | None] = mapped_column(Integer)
    data_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    data_to: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=Status.CANDIDATE, index=True)
    # The version that was live when this one was promoted: where a rollback returns to.
    replaced: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Registry:
    """Adapter versions of one base model."""

    def __init__(self, sessions: sessionmaker[Session], base_model: str):
        self.sessions = sessions
        self.base_model = base_model

    # ----- reading -----

    def get(self, name: str) -> AdapterVersion:
        with self.sessions() as session:
            version = session.scalar(select(AdapterVersion).where(AdapterVersion.name == name))
        if version is None:
            raise RegistryError(f"no adapter version named {name!r} (see `careloop adapters list`)")
        return version

    def versions(self, status: Status | None = None) -> list[AdapterVersion]:
        query = select(AdapterVersion).where(AdapterVersion.base_model == self.base_model)
        if status is not None:
            query = query.where(AdapterVersion.status == status)
        with self.sessions() as session:
            return list(session.scalars(query.order_by(AdapterVersion.id)))

    def live(self) -> AdapterVersion | None:
        """The live version, or None when the base model answers on its own."""
        with self.sessions() as session:
            return session.scalar(select(AdapterVersion).where(
                AdapterVersion.base_model == self.base_model, AdapterVersion.status == Status.LIVE))

    # ----- writing -----

    def register(self, name: str, path: Path | str, *, actor: str, parent: str | None = None,
                 training_run_id: int | None = None, data_window: tuple[datetime, datetime] | None = None,
                 metrics: dict[str, Any] | None = None, note: str = "") -> AdapterVersion:
        """Record a trained adapter as a candidate. Names are immutable versions: never reused."""
        if not NAME_PATTERN.match(name):
            raise RegistryError(f"adapter name {name!r} is invalid: use 1-64 of a-z 0-9 . _ -, "
                                "starting with a letter or digit (e.g. med-v0007)")
        if name == self.base_model:
            raise RegistryError(f"adapter name {name!r} is the base model's name")
        if not (Path(path) / "adapter_config.json").is_file():
            raise RegistryError(f"no LoRA adapter at {path} (adapter_config.json missing)")
        version = AdapterVersion(
            name=name, base_model=self.base_model, path=str(Path(path).resolve()), parent=parent,
            training_run_id=training_run_id, metrics=metrics or {}, note=note,
            data_from=data_window[0] if data_window else None, data_to=data_window[1] if data_window else None)
        try:
            with transaction(self.sessions) as session:
                session.add(version)
                session.flush()
                audit.record(session, actor, "adapter.register", name, path=version.path, parent=parent)
        except IntegrityError:
            raise RegistryError(f"adapter version {name!r} already exists; names are never reused, "
                                "register the new adapter under a new version name") from None
        log.info("adapter_registered", adapter=name, actor=actor)
        return version

    def reject(self, name: str, *, actor: str, reason: str) -> None:
        """A candidate that must never go live (failed the gate, or an admin said no)."""
        with transaction(self.sessions) as session:
            version = self._locked(session, name)
            if version.status == Status.LIVE:
                raise RegistryError(f"{name} is live: roll it back (`careloop adapters rollback`) instead")
            self._set_status(version, Status.REJECTED, note=reason)
            audit.record(session, actor, "adapter.reject", name, reason=reason)

    def retire(self, name: str, *, actor: str) -> None:
        """Take a version out of use. Retiring the live version leaves the base model answering."""
        with transaction(self.sessions) as session:
            version = self._locked(session, name)
            was = version.status
            self._set_status(version, Status.RETIRED)
            audit.record(session, actor, "adapter.retire", name, was=was)

    def make_live(self, name: str, *, actor: str) -> str | None:
        """Flip ``name`` to live and the live version to retired, in one transaction with its audit
        row; returns the replaced version's name (None: the base model answered). Serving must
        already answer with ``name`` (``adapters.rollout.promote`` sees to it)."""
        with transaction(self.sessions) as session:
            version = self._locked(session, name)
            if version.status not in PROMOTABLE:
                raise RegistryError(f"{name} became {version.status} while it was being promoted")
            previous = self._current_live(session)
            if previous is not None:
                self._set_status(previous, Status.RETIRED)
                session.flush()  # the one-live index must see the old row leave first
            self._set_status(version, Status.LIVE)
            version.replaced = previous.name if previous else None
            version.promoted_at = utcnow()
            # The version's note holds what its gate did not pass (e.g. too little clinician evidence): an
            # admin's promotion of such a version says so in the audit log (issue 32, 1).
            audit.record(session, actor, "adapter.promote", name, previous=version.replaced,
                         **({"note": version.note} if version.note else {}))
            self._flush_or_conflict(session)
            return version.replaced

    def restore_replaced(self, current: str, *, actor: str, reason: str) -> str:
        """Roll back the live version ``current``: it becomes rejected and the version it replaced
        live again (the base model, if it replaced none), in one transaction with its audit row.
        Returns the name that answers now. Serving must already answer with it."""
        with transaction(self.sessions) as session:
            version = self._locked(session, current)
            if version.status != Status.LIVE:
                raise RegistryError(f"{current} stopped being live while rolling back; nothing changed")
            if version.replaced is None:
                self._set_status(version, Status.REJECTED, note=reason)
                audit.record(session, actor, "adapter.rollback", self.base_model, rolled_back=current,
                             reason=reason)
                return self.base_model
            target = self._locked(session, version.replaced)
            self._set_status(version, Status.REJECTED, note=reason)
            session.flush()
            self._set_status(target, Status.LIVE)
            target.promoted_at = utcnow()
            audit.record(session, actor, "adapter.rollback", target.name, rolled_back=current, reason=reason)
            self._flush_or_conflict(session)
            return target.name

    def out_of_use(self) -> list[AdapterVersion]:
        """Retired and rejected versions: the ones serving may unload."""
        return [v for v in self.versions() if v.status in OUT_OF_USE]

    # ----- helpers -----

    def _current_live(self, session: Session) -> AdapterVersion | None:
        return session.scalar(select(AdapterVersion).where(
            AdapterVersion.base_model == self.base_model,
            AdapterVersion.status == Status.LIVE).with_for_update())

    @staticmethod
    def _locked(session: Session, name: str) -> AdapterVersion:
        version = session.scalar(select(AdapterVersion).where(AdapterVersion.name == name).with_for_update())
        if version is None:
            raise RegistryError(f"no adapter version named {name!r} (see `careloop adapters list`)")
        return version

    @staticmethod
    def _set_status(version: AdapterVersion, status: Status, note: str | None = None) -> None:
        version.status = status
        version.status_changed_at = utcnow()
        if note is not None:
            version.note = note

    @staticmethod
    def _flush_or_conflict(session: Session) -> None:
        try:
            session.flush()
        except IntegrityError:
            raise RegistryError("another promotion changed the live version at the same time; "
                                "nothing changed here, check `careloop adapters list` and retry") from None


def open_registry(settings: Settings) -> Registry:
    """The registry of the configured base model, on the configured database (its engine is
    shared per database URL, see ``careloop.db.sessions_for``)."""
    from careloop.base_model import base_model_name

    return Registry(sessions_for(settings.resolved_database_url), base_model_name(settings))

