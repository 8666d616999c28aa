"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as SSE or not)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from serving import protocol as p
from serving.delivery import result_or_cancel, sse
from serving.engine import RequestHandle, SamplingParams, TextDelta
from serving.errors import openai_error
from serving.metrics import Metrics
from serving.state import Credentials, State

# "cancelled": the client hung up (or serving is stopping): vLLM's word for it. An unmapped reason was a
# KeyError traceback in the log each time a fill was stopped mid-answer.
OPENAI_FINISH = {"eos": "stop", "stop_sequence": "stop", "length": "length", "cancelled": "abort", "error": "abort"}

router = APIRouter()


@router.get("/v1/models")
async def models(state: State, credentials: Credentials) -> p.ModelList:
    """The base model and loaded adapters. An adapter's ``root`` is its directory for the control
    token's holder (as vLLM shows it); anyone else sees its name: the path tells them the layout of
    the server's disk."""
    engine = state.engine
    shows_paths = state.holds_token(credentials)
    cards = [p.ModelCard(id=engine.model_name, root=engine.model_name,
                         max_model_len=engine.context_length, demo_model=engine.is_demo)]
    cards += [p.ModelCard(id=name, root=path if shows_paths else name, parent=engine.model_name,
                          max_model_len=engine.context_length, demo_model=engine.is_demo)
              for name, path in sorted(engine.adapters.items())]
    return p.ModelList(data=cards)


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: p.ChatCompletionRequest, request: Request,
               state: State) -> p.ChatCompletionResponse | StreamingResponse:
    engine = state.engine
    adapter = state.resolve_adapter(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt = await state.prompt_ids(sum(len(m["content"]) for m in messages), engine.chat_prompt_ids, messages)
    default = state.decoding
    max_tokens = engine.check_length(len(prompt), body.token_limit or min(
        default.max_tokens, engine.context_length - len(prompt)))
    params = SamplingParams(
        max_tokens, default.temperature if body.temperature is None else body.temperature,
        body.top_p or default.top_p, body.seed, tuple(body.stop or ()), body.ignore_eos,
        body.repetition_penalty or default.repetition_penalty, body.priority)
    handle = engine.submit(prompt, adapter, params)
    if not body.stream:
        result = await result_or_cancel(request, handle)
        state.metrics.finished(result)
        if result.error:
            return openai_error(500, f"Generation failed: {result.error}", "InternalServerError")
        return p.ChatCompletionResponse(
            model=body.model, choices=[p.Choice(message=p.ResponseMessage(content=result.text),
                                                finish_reason=OPENAI_FINISH[result.finish_reason])],
            usage=p.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                          total_tokens=result.prompt_tokens + result.completion_tokens))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_chat_stream(handle, body.model, include_usage, state.metrics),
                             media_type="text/event-stream")


async def _chat_stream(handle: RequestHandle, model: str, include_usage: bool,
                       metrics: Metrics) -> AsyncIterator[bytes]:
    chunk_id, created = f"chatcmpl-{id(handle):x}{int(time.time())}", int(time.time())

    def chunk(delta: p.Delta, finish: str | None = None, usage: p.Usage | None = None) -> bytes:
        choices = [] if usage else [p.ChunkChoice(delta=delta, finish_reason=finish)]
        payload = p.ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=choices,
                                        usage=usage).model_dump(exclude_none=True)
        for choice in payload["choices"]:  # OpenAI sends an explicit null until the last chunk
            choice.setdefault("finish_reason", None)
        return sse(json.dumps(payload))

    try:
        yield chunk(p.Delta(role="assistant", content=""))
        async for event in handle.coalesced():
            if isinstance(event, TextDelta):
                yield chunk(p.Delta(content=event.text))
                continue
            metrics.finished(event)
            if event.error:
                yield sse(json.dumps({"error": {"message": f"Generation failed: {event.error}",
                                                "type": "InternalServerError", "code": 500}}))
                break
            yield chunk(p.Delta(), finish=OPENAI_FINISH[event.finish_reason])
            if include_usage:
                yield chunk(p.Delta(), usage=p.Usage(
                    prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                    total_tokens=event.prompt_tokens + event.completion_tokens))
        yield sse("[DONE]")
    finally:
        handle.cancel()  # no-op when finished; stops decoding when the client went away
