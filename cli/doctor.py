"""`careloop doctor`: what is configured and whether each part is reachable."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from careloop.settings import Settings, redacted


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    required: bool
    detail: str


def _data_dir(settings: Settings) -> str:
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=settings.home):
        pass
    return f"{settings.home.resolve()} (writable)"


def _database(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    from careloop.db import current_revision, head_revision, make_engine

    url = settings.resolved_database_url
    engine = make_engine(url)
    try:
        current, head = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    shown = make_url(url).render_as_string(hide_password=True)
    if current != head:
        raise RuntimeError(f"{shown}: schema at {current or 'empty'}, code expects {head}; run `careloop db upgrade`")
    return f"{shown} (schema {current})"


def _seed_data(settings: Settings) -> str:
    from careloop.seed import validate_all

    counts = validate_all(settings.seed_data_dir)
    return f"{settings.seed_data_dir} ({sum(counts.values())} records in {len(counts)} files)"


def _redis(settings: Settings) -> str:
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        version = client.info("server")["redis_version"]
    except redis.RedisError as exc:
        raise RuntimeError(
            f"{settings.redis_url} unreachable ({exc}); start Redis or run `careloop up`, which starts one"
        ) from None
    finally:
        client.close()
    return f"{settings.redis_url} (Redis {version})"


def _answers(base: str, path: str, command: str) -> None:
    """Raise with the reason unless GET base+path answers 200; ``command`` starts what is missing."""
    import httpx

    try:
        response = httpx.get(f"{base}{path}", timeout=2)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"{base} not answering ({type(exc).__name__}); start it with `{command}`") from None
    if response.status_code != 200:
        raise RuntimeError(f"{base}{path} returned {response.status_code}")


def _serving(settings: Settings) -> str:
    _answers(settings.serving_url, "/health", "careloop serve")
    return f"{settings.serving_url} (healthy)"


def _bot(settings: Settings) -> str:
    from cli.up import client_host

    url = f"http://{client_host(settings.bot_host)}:{settings.bot_port}"
    _answers(url, "/", "careloop bot")
    return f"{url} (the sign-in page answers)"


def _workers(settings: Settings) -> str:
    """Which running workers consume which queue, asked over the broker (a second at most)."""
    from careloop.queues import QUEUES, configure

    try:
        replies = configure(settings).control.inspect(timeout=1.0).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - kombu raises several transport errors
        raise RuntimeError(f"could not ask the workers over {settings.redis_url} ({type(exc).__name__})") from None
    if not replies:
        raise RuntimeError("no worker answered within 1 s: start `careloop worker` (or `careloop up`)")
    consumed = {queue["name"] for queues in replies.values() for queue in queues}
    missing = [queue for queue in QUEUES if queue not in consumed]
    answered = f"{len(replies)} answered, consuming {', '.join(q for q in QUEUES if q in consumed)}"
    if missing:
        raise RuntimeError(f"{answered}; none consumes {', '.join(missing)}: "
                           f"start `careloop worker --queues {','.join(missing)}`")
    return answered


def feedback_delivery(settings: Settings) -> str:
    """What clinicians submitted that is not stored yet; fails when storing is behind (an event on its way
    for over a minute, or the feedback queue backing up), which `careloop up --status` shows too
    (issue 29, 7: with judgments 15 minutes late, doctor and the status said all was well)."""
    import redis

    from feedback.in_flight import in_flight

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        late = in_flight(client)
    except redis.RedisError as exc:
        raise RuntimeError(f"could not read the queues at {settings.redis_url} ({type(exc).__name__})") from None
    finally:
        client.close()
    if late.behind:
        raise RuntimeError(f"storing is behind: {late.describe()}; is the feedback worker up and free? "
                           "(`careloop up --status`, feedback-worker.log)")
    return "everything submitted is stored" if late.empty else late.describe()


def _beat(settings: Settings) -> str:
    import time

    from careloop.queues import BEAT_HEARTBEAT_SECONDS, beat_heartbeat

    heartbeat = beat_heartbeat(settings.redis_url)
    if heartbeat is None:
        raise RuntimeError(f"no heartbeat in the last {3 * BEAT_HEARTBEAT_SECONDS} s: start `careloop beat` "
                           "(exactly one; or `careloop up`)")
    return f"alive: pid {heartbeat['pid']} on {heartbeat['host']}, {time.time() - heartbeat['at']:.0f} s ago"


def _base_model(settings: Settings) -> str:
    from careloop.base_model import describe_base_model, resolve_base_model

    model = resolve_base_model(settings)
    name, origin, size = describe_base_model(settings)
    return f"{name}: {origin}; {size}" + (" (not fit for clinical use)" if model.is_demo else "")


def _decoding(settings: Settings) -> str:
    """How every answer is decoded (chat, review, evaluation), and where that came from."""
    from careloop.base_model import base_model_path
    from careloop.decoding import decoding_for, from_generation_config, generation_config_of

    chosen = [name for name in ("temperature", "top_p", "repetition_penalty")
              if getattr(settings, f"decoding_{name}") is not None]
    model_says = from_generation_config(generation_config_of(base_model_path(settings)) or {})
    source = ", ".join(filter(None, [f"CARELOOP_DECODING_* ({', '.join(chosen)})" if chosen else "",
                                     f"the model's generation config ({', '.join(model_says)})" if model_says else "",
                                     "careloop's default" if len(set(chosen) | set(model_says)) < 3 else ""]))
    return f"{decoding_for(settings).describe()}: from {source}"


def _gpu(_: Settings) -> str:
    import torch

    if not torch.cuda.is_available():
        return "none (CPU only)"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


CHECKS: list[tuple[str, bool, Callable[[Settings], str]]] = [
    ("data dir", True, _data_dir),
    ("database", True, _database),
    ("seed data", True, _seed_data),
    ("redis", True, _redis),
    ("base model", True, _base_model),
    ("decoding", False, _decoding),
    ("serving", False, _serving),
    ("bot", False, _bot),
    ("workers", False, _workers),
    ("feedback", False, feedback_delivery),
    ("beat", False, _beat),
    ("gpu", False, _gpu),
]


def run_checks(settings: Settings) -> list[Check]:
    results = []
    for name, required, probe in CHECKS:
        try:
            results.append(Check(name, True, required, redacted(probe(settings))))
        except Exception as exc:  # noqa: BLE001 - a doctor reports failures, it does not crash on them
            detail = str(exc).strip() or type(exc).__name__
            results.append(Check(name, False, required, redacted(detail.replace(os.linesep, " "))))
    return results
