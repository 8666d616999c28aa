"""`careloop serve`: the embedded engine behind the HTTP API, in one process."""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import SQLAlchemyError

from careloop.base_model import resolve_base_model
from careloop.log import get_logger
from careloop.settings import Settings
from serving.api import create_app
from serving.engine import Engine

log = get_logger(__name__)


class ExternalBackend(Exception):
    pass


def build_engine(settings: Settings) -> Engine:
    model = resolve_base_model(settings, build_if_missing=True)
    settings.resolved_adapter_dir.mkdir(parents=True, exist_ok=True)
    return Engine(model.source, model.name, model.is_demo, max_batch=settings.max_batch,
                  max_queue=settings.max_queue, context_length=settings.context_length or None,
                  adapter_dir=settings.resolved_adapter_dir)


def _restore_live_version(engine: Engine, settings: Settings) -> None:
    """After a restart, serve the registry's live version again before accepting requests."""
    from serving.registry import open_registry

    try:
        live = open_registry(settings).live()
    except SQLAlchemyError as exc:
        log.warning("registry_unreachable_serving_base_model_only", error=str(exc).splitlines()[0])
        return
    if live is not None:
        asyncio.run(engine.load_adapter(live.name, live.path))
        log.info("live_adapter_restored", adapter=live.name)


def main(settings: Settings) -> None:
    import uvicorn

    if settings.serving_backend != "embedded":
        raise ExternalBackend(
            f"CARELOOP_SERVING_BACKEND={settings.serving_backend}: answers come from the external "
            f"{settings.serving_backend} server at CARELOOP_SERVING_URL; `careloop serve` runs only the "
            "embedded engine (see README, 'Serving backends')."
        )
    engine = build_engine(settings)
    _restore_live_version(engine, settings)
    app = create_app(engine, settings.resolved_control_token(), settings.default_max_tokens,
                     settings.max_request_bytes, settings.max_prompt_chars_per_token)
    log.info("serving_started", model=engine.model_name, demo_model=engine.is_demo,
             host=settings.serving_host, port=settings.serving_port)
    try:
        uvicorn.run(app, host=settings.serving_host, port=settings.serving_port, log_config=None,
                    timeout_graceful_shutdown=10)
    finally:
        engine.shutdown()
