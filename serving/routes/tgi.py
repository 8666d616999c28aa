"""TGI-compatible routes: ``/health``, ``/info``, ``/metrics`` (Prometheus), ``POST /generate`` and
``/generate_stream`` (``parameters.adapter_id`` picks the adapter)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import protocol as p
from serving.delivery import result_or_cancel, sse
from serving.engine import Finished, RequestHandle, SamplingParams, TextDelta
from serving.errors import tgi_error
from serving.state import ServingState, State

# TGI has no word for a request cut short (the client hung up, or serving is stopping): "length", as it
# ended before its end.
TGI_FINISH = {"eos": "eos_token", "stop_sequence": "stop_sequence", "length": "length", "cancelled": "length",
              "error": "length"}
TGI_DEFAULT_MAX_NEW_TOKENS = 100

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {}


@router.get("/info")
async def info(request: Request, state: State) -> dict:
    engine = state.engine
    return {
        "model_id": engine.model_name,
        "model_dtype": str(engine.model.dtype).removeprefix("torch."),
        "model_device_type": engine.device.type,
        "max_input_tokens": engine.context_length - 1,
        "max_total_tokens": engine.context_length,
        "max_batch_size": engine.max_batch,
        "max_client_batch_size": 1,
        "waiting_served_ratio": 0,
        "router": "careloop-embedded",
        "version": request.app.version,
        "demo_model": engine.is_demo,
        "adapters": sorted(engine.adapters),
    }


@router.get("/metrics")
async def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _submit(body: p.GenerateRequest, state: ServingState) -> RequestHandle:
    engine, params = state.engine, body.parameters
    adapter = state.resolve_adapter(params.adapter_id)
    prompt = await state.prompt_ids(len(body.inputs), engine.text_prompt_ids, body.inputs)
    max_tokens = engine.check_length(len(prompt), params.max_new_tokens or min(
        TGI_DEFAULT_MAX_NEW_TOKENS, engine.context_length - len(prompt)))
    sampling = params.do_sample or params.temperature is not None or params.top_p is not None
    temperature = (params.temperature or 1.0) if sampling else 0.0
    return engine.submit(prompt, adapter, SamplingParams(
        max_tokens, temperature, params.top_p or 1.0, params.seed, tuple(params.stop),
        repetition_penalty=params.repetition_penalty or 1.0))


def _details(result: Finished, seed: int | None) -> p.GenerateDetails:
    return p.GenerateDetails(finish_reason=TGI_FINISH[result.finish_reason],
                             generated_tokens=result.completion_tokens, seed=seed)


@router.post("/generate", response_model=None)
async def generate(body: p.GenerateRequest, request: Request, state: State) -> p.GenerateResponse | JSONResponse:
    handle = await _submit(body, state)
    result = await result_or_cancel(request, handle)
    state.metrics.finished(result)
    if result.error:
        return tgi_error(500, f"Generation failed: {result.error}", "generation")
    details = _details(result, body.parameters.seed) if body.parameters.details else None
    return p.GenerateResponse(generated_text=result.text, details=details)


@router.post("/generate_stream")
async def generate_stream(body: p.GenerateRequest, state: State) -> StreamingResponse:
    handle = await _submit(body, state)

    async def events() -> AsyncIterator[bytes]:
        index = 0
        try:
            async for event in handle:
                index += 1
                if isinstance(event, TextDelta):
                    token = p.StreamToken(id=event.token_id, text=event.text)
                    yield sse(p.StreamResponse(index=index, token=token).model_dump_json())
                    continue
                state.metrics.finished(event)
                if event.error:
                    yield sse(json.dumps({"error": f"Generation failed: {event.error}",
                                          "error_type": "generation"}))
                    return
                final = p.StreamResponse(index=index, token=p.StreamToken(id=-1, text="", special=True),
                                         generated_text=event.text, details=_details(event, body.parameters.seed))
                yield sse(final.model_dump_json())
        finally:
            handle.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")
