"""Adapter control with vLLM's names and bodies (``POST /v1/load_lora_adapter``,
``/v1/unload_lora_adapter``), guarded by the control bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from careloop.log import get_logger
from serving import protocol as p
from serving.engine import EngineError
from serving.errors import Unauthorized
from serving.state import Credentials, State

log = get_logger(__name__)


def require_token(state: State, credentials: Credentials) -> None:
    if not state.holds_token(credentials):
        raise Unauthorized()


router = APIRouter(dependencies=[Depends(require_token)])


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: p.LoadLoraAdapterRequest, state: State) -> PlainTextResponse:
    try:
        await state.engine.load_adapter(body.lora_name, body.lora_path)
    except EngineError:
        state.metrics.adapter_loads.labels("error").inc()
        raise
    state.metrics.adapter_loads.labels("ok").inc()
    log.info("adapter_loaded", adapter=body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest, state: State) -> PlainTextResponse:
    await state.engine.unload_adapter(body.lora_name)
    log.info("adapter_unloaded", adapter=body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
