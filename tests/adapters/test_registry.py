"""The adapter registry: versions, statuses and the one-live rule, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from adapters.registry import AdapterVersion, Registry, RegistryError, Status
from careloop import audit, db


@pytest.fixture
def registry(sessions) -> Registry:
    return Registry(sessions, "base-model")


def _adapter(tmp_path, name: str):
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    return path


def test_register_records_a_candidate_with_its_lineage(registry, tmp_path):
    version = registry.register("med-v0001", _adapter(tmp_path, "a"), actor="trainer", parent=None,
                                training_run_id=7, metrics={"rougeL": 0.2}, note="first")
    stored = registry.get("med-v0001")
    assert (stored.status, stored.training_run_id, stored.metrics, stored.note) == (
        Status.CANDIDATE, 7, {"rougeL": 0.2}, "first")
    assert stored.path == version.path and stored.path.startswith("/")
    registry.register("med-v0002", _adapter(tmp_path, "b"), actor="trainer", parent="med-v0001")
    assert [v.name for v in registry.versions()] == ["med-v0001", "med-v0002"]
    assert registry.get("med-v0002").parent == "med-v0001"
    assert registry.live() is None
    with registry.sessions() as session:
        assert [e.action for e in audit.recent(session)] == ["adapter.register", "adapter.register"]


@pytest.mark.parametrize("name, reason", [
    ("Med-V1", "invalid"), ("", "invalid"), ("x" * 65, "invalid"), ("../escape", "invalid"),
    ("base-model", "base model's name")])
def test_register_refuses_bad_names(registry, tmp_path, name, reason):
    with pytest.raises(RegistryError, match=reason):
        registry.register(name, _adapter(tmp_path, "a"), actor="t")


def test_register_refuses_a_directory_without_an_adapter(registry, tmp_path):
    with pytest.raises(RegistryError, match="adapter_config.json missing"):
        registry.register("med-v0001", tmp_path, actor="t")


def test_names_are_never_reused(registry, tmp_path):
    registry.register("med-v0001", _adapter(tmp_path, "a"), actor="t")
    registry.retire("med-v0001", actor="t")
    with pytest.raises(RegistryError, match="already exists; names are never reused"):
        registry.register("med-v0001", _adapter(tmp_path, "b"), actor="t")
    assert len(registry.versions()) == 1


def test_the_database_allows_one_live_version_per_base_model(registry, tmp_path):
    for name in ("med-v0001", "med-v0002"):
        registry.register(name, _adapter(tmp_path, name), actor="t")
    with pytest.raises(IntegrityError), db.transaction(registry.sessions) as session:
        session.execute(sa.update(AdapterVersion).values(status=Status.LIVE))
    assert registry.live() is None
    other = Registry(registry.sessions, "other-base")  # another base model may have its own live one
    other.register("other-v0001", _adapter(tmp_path, "o"), actor="t")
    with db.transaction(registry.sessions) as session:
        session.execute(sa.update(AdapterVersion).where(AdapterVersion.name.in_(["med-v0001", "other-v0001"]))
                        .values(status=Status.LIVE))
    assert registry.live().name == "med-v0001" and other.live().name == "other-v0001"


def test_reject_and_retire(registry, tmp_path):
    registry.register("med-v0001", _adapter(tmp_path, "a"), actor="t")
    registry.reject("med-v0001", actor="gate", reason="safety regressed")
    rejected = registry.get("med-v0001")
    assert (rejected.status, rejected.note) == (Status.REJECTED, "safety regressed")
    with pytest.raises(RegistryError, match="no adapter version named 'nope'"):
        registry.retire("nope", actor="t")
