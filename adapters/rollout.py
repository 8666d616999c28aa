"""Adapter rollout: which versions serving has loaded, kept in step with the registry's live one.

The registry (``adapters.registry``) records versions and flips their status; the client
(``serving.client``) speaks HTTP. Rollout joins the two, in one place for every caller (the CLI,
the admin page, a training run's auto-promote):

- promote: load the version on every serving replica, smoke-test it through the public API, then
  flip ``live`` (the registry's transaction); an exception before the flip changes nothing.
- rollback: the same flip backwards, to the version the live one replaced (or the base model).
- unload: a version that stopped being live is unloaded once the grace period has passed since
  (clients cache the live name for a few seconds), unless it went live again meanwhile; and if a
  flip and an unload cross anyway, whichever comes second loads the live version again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from adapters.registry import OUT_OF_USE, PROMOTABLE, AdapterVersion, Registry, RegistryError, open_registry
from careloop.db import aware
from careloop.log import get_logger
from careloop.settings import Settings
from serving.client import ServingClient, ServingRejected

log = get_logger(__name__)


@dataclass(frozen=True)
class Promotion:
    live: str  # the name that answers now (the base model's after rolling back to none)
    previous: str | None  # the one it replaced (None: the base model answered)
    seconds: float


def open_client(settings: Settings, timeout: float | None = None) -> ServingClient:
    """A client for CARELOOP_SERVING_URL that answers with the registry's live version, waiting
    ``timeout`` seconds for an answer (default CARELOOP_SERVING_TIMEOUT)."""
    registry = open_registry(settings)

    def live_lookup() -> str | None:
        version = registry.live()
        return version.name if version else None

    return ServingClient.from_settings(settings, live_lookup=live_lookup, base_model=registry.base_model,
                                       timeout=timeout)


def ensure_serving(version: AdapterVersion, client: ServingClient) -> None:
    """Loaded and answering on every serving replica, or an exception before anything changes."""
    for replica in client.replicas():
        if version.name not in replica.loaded_adapters():
            replica.load_adapter(version.name, version.path)
        replica.smoke_test(version.name)


def promote(registry: Registry, name: str, client: ServingClient, *, actor: str) -> Promotion:
    """Load ``name`` into serving, smoke-test it, then make it live in one transaction."""
    started = time.perf_counter()
    version = registry.get(name)
    if version.status not in PROMOTABLE:
        raise RegistryError(f"{name} is {version.status}; only candidate or retired versions can be promoted")
    ensure_serving(version, client)
    previous = registry.make_live(name, actor=actor)
    _reload_if_unloaded(version, client)
    result = Promotion(name, previous, time.perf_counter() - started)
    log.info("adapter_promoted", adapter=name, previous=previous, actor=actor, seconds=round(result.seconds, 3))
    return result


def rollback(registry: Registry, client: ServingClient, *, actor: str, reason: str = "rolled back") -> Promotion:
    """Make the version the live one replaced live again (the base model, if it replaced none);
    the rolled-back one becomes rejected."""
    started = time.perf_counter()
    current = registry.live()
    if current is None:
        raise RegistryError("no version is live: nothing to roll back")
    target = registry.get(current.replaced) if current.replaced is not None else None
    if target is not None:
        ensure_serving(target, client)
    live = registry.restore_replaced(current.name, actor=actor, reason=reason)
    if target is not None:
        _reload_if_unloaded(target, client)
    log.info("adapter_rolled_back", adapter=live, rolled_back=current.name, actor=actor)
    return Promotion(live, current.name, time.perf_counter() - started)


def unload_stale(registry: Registry, client: ServingClient, grace_seconds: float) -> list[str]:
    """Unload from serving the retired and rejected versions, once ``grace_seconds`` have passed
    since they stopped being live (clients may still hold the old name in their cache)."""
    loaded = {replica: set(replica.loaded_adapters()) for replica in client.replicas()}
    stale = [v for v in registry.out_of_use() if any(v.name in names for names in loaded.values())]
    unloaded = []
    for version in stale:
        age = (datetime.now(UTC) - aware(version.status_changed_at)).total_seconds()
        if age < grace_seconds:
            time.sleep(grace_seconds - age)
        if registry.get(version.name).status not in OUT_OF_USE:  # re-promoted meanwhile
            continue
        for replica, names in loaded.items():
            if version.name in names:
                replica.unload_adapter(version.name)
        if registry.get(version.name).status in OUT_OF_USE:
            unloaded.append(version.name)
        else:  # a promotion or rollback flipped it live between the check and the unload
            _reload_if_unloaded(version, client)
    return unloaded


def _reload_if_unloaded(version: AdapterVersion, client: ServingClient) -> None:
    """Load ``version`` again on each replica that lacks it. Issue 31, 12: ``unload_stale`` checks
    that a version is out of use, then unloads it; a promotion or rollback of that version could
    land in between (its load check seeing the version still loaded, its flip after the unload),
    leaving the live version unloaded and every chat failing. Each side checks after its
    own step, so whichever comes second restores it. Best effort: the flip has happened, and
    until this succeeds clients answer with the base model (``ServingClient`` says so)."""
    for replica in client.replicas():
        try:
            if version.name in replica.loaded_adapters():
                continue
            log.warning("live_version_unloaded_loading_again", adapter=version.name, replica=replica.url)
            replica.load_adapter(version.name, version.path)
        except Exception as exc:  # noqa: BLE001 - best effort (see above); 409: the other side loaded it first
            if not (isinstance(exc, ServingRejected) and exc.status == 409):
                log.exception("live_version_reload_failed", adapter=version.name, replica=replica.url)


def unload_replaced(registry: Registry, client: ServingClient, grace_seconds: float, *,
                    background: bool = False) -> list[str] | None:
    """After a promotion or rollback: ``unload_stale`` as best effort (a failure is logged; the
    CLI's ``careloop adapters`` can unload by hand). ``background``: in a daemon thread, for a
    caller that must answer now (the admin page); returns None then."""
    def unload() -> list[str]:
        try:
            return unload_stale(registry, client, grace_seconds)
        except Exception:  # noqa: BLE001 - best effort: what stays loaded only costs memory
            log.exception("unload_stale_failed")
            return []

    if not background:
        return unload()
    threading.Thread(target=unload, name="careloop-unload-stale", daemon=True).start()
    return None
