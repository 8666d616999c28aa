"""`careloop serve`: the embedded engine behind the HTTP API, in one process.

Serving answers; it does not decide which adapter version is live. Its entry point is handed the
adapters to load before the first request (``lora_modules``, as vLLM's ``--lora-modules``); the
``careloop serve`` command reads them from the registry (``adapters.registry``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from careloop.base_model import resolve_base_model
from careloop.decoding import decoding_for
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
    return Engine(model.name_or_path, model.name, model.is_demo, max_batch=settings.max_batch,
                  max_queue=settings.max_queue, context_length=settings.context_length or None,
                  adapter_dir=settings.resolved_adapter_dir,
                  dtype=getattr(torch, settings.serving_dtype))


@dataclass(frozen=True)
class LoRAModule:
    """An adapter to load at start, under the name requests use for it."""

    name: str
    path: str


def main(settings: Settings, lora_modules: Sequence[LoRAModule] = ()) -> None:
    """Serve until stopped, with ``lora_modules`` loaded before the first request (after a restart:
    the live version, so students are answered by the same version as before)."""
    import uvicorn

    if settings.serving_backend != "embedded":
        raise ExternalBackend(
            f"CARELOOP_SERVING_BACKEND={settings.serving_backend}: answers come from the external "
            f"{settings.serving_backend} server at CARELOOP_SERVING_URL; `careloop serve` runs only the "
            "embedded engine (see README, 'Serving backends')."
        )
    engine = build_engine(settings)
    for module in lora_modules:
        asyncio.run(engine.load_adapter(module.name, module.path))
        log.info("adapter_loaded_at_start", adapter=module.name)
    decoding = decoding_for(settings)
    app = create_app(engine, settings.resolved_control_token(), decoding,
                     settings.max_request_bytes, settings.max_prompt_chars_per_token)
    log.info("serving_started", model=engine.model_name, demo_model=engine.is_demo, decoding=decoding.describe(),
             dtype=str(engine.dtype).removeprefix("torch."),
             host=settings.serving_host, port=settings.serving_port)
    try:
        uvicorn.run(app, host=settings.serving_host, port=settings.serving_port, log_config=None,
                    timeout_graceful_shutdown=10)
    finally:
        engine.shutdown()
