"""HTTP routes of the embedded engine: OpenAI chat, TGI generate, health/info/models/metrics, LoRA control.

HTTP concerns only (parsing, status codes, SSE, auth, metrics); generation lives in ``engine.py``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from careloop.log import get_logger
from serving import protocol as p
from serving.engine import (AdapterExists, AdapterLoadError, Engine, EngineError, Finished, PromptTooLong,
                            QueueFull, RequestHandle, SamplingParams, TextDelta, UnknownAdapter)

log = get_logger(__name__)

# engine error -> (HTTP status, OpenAI error type)
ERROR_STATUS: dict[type[EngineError], tuple[int, str]] = {
    PromptTooLong: (400, "BadRequestError"),
    UnknownAdapter: (404, "NotFoundError"),
    AdapterExists: (409, "ConflictError"),
    AdapterLoadError: (400, "BadRequestError"),
    QueueFull: (429, "ServiceUnavailableError"),
}
RETRY_AFTER_SECONDS = "1"
OPENAI_FINISH = {"eos": "stop", "stop_sequence": "stop", "length": "length"}
TGI_FINISH = {"eos": "eos_token", "stop_sequence": "stop_sequence", "length": "length"}


class Metrics:
    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("careloop_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("careloop_request_seconds", "Request latency by route", ["route"],
                                 registry=self.registry)
        self.ttft = Histogram("careloop_time_to_first_token_seconds", "Queue + prefill time",
                              registry=self.registry)
        self.tokens = Counter("careloop_generated_tokens", "Tokens generated", registry=self.registry)
        Gauge("careloop_queue_depth", "Requests waiting for a batch slot",
              registry=self.registry).set_function(lambda: engine.stats.queued)
        Gauge("careloop_running_requests", "Requests in the running batch",
              registry=self.registry).set_function(lambda: engine.stats.running)
        Gauge("careloop_loaded_adapters", "LoRA adapters loaded",
              registry=self.registry).set_function(lambda: len(engine.adapters))
        self.adapter_loads = Counter("careloop_adapter_loads", "LoRA adapter loads by result",
                                     ["result"], registry=self.registry)
        self.registry.register(_EngineCounters(engine))

    def finished(self, result: Finished) -> None:
        self.tokens.inc(result.completion_tokens)
        if result.first_token_seconds is not None:
            self.ttft.observe(result.first_token_seconds)


class _EngineCounters:
    """The engine's own batching counters (``EngineStats``), read at scrape time."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.engine.stats
        for name, value, text in [
                ("batched_steps", stats.batched_steps, "Forward passes over more than one request"),
                ("mixed_adapter_steps", stats.mixed_adapter_steps, "Forward passes mixing adapters"),
                ("joined_running_batch", stats.joined_running_batch, "Requests that joined a decoding batch")]:
            yield CounterMetricFamily(f"careloop_{name}", text, value=value)


def _openai_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status, headers=headers)


def _tgi_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)


def _error_response(path: str, status: int, message: str, kind: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in (429, 503) else None
    if path.startswith("/generate"):
        return _tgi_error(status, message, "overloaded" if status == 429 else "validation", headers)
    return _openai_error(status, message, kind, headers)


def _sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    handle.cancel()


async def _result_or_cancel(request: Request, handle: RequestHandle) -> Finished:
    """Wait for a non-streaming result; a client that hangs up cancels its generation."""
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    try:
        return await handle.result()
    finally:
        watcher.cancel()


def create_app(engine: Engine, control_token: str, default_max_tokens: int = 256,
               max_request_bytes: int = 8 * 1024 * 1024) -> FastAPI:
    app = FastAPI(title="careloop serving", version="0.1.0",
                  description="OpenAI- and TGI-compatible API over careloop's embedded engine.")
    metrics = Metrics(engine)
    bearer = HTTPBearer(auto_error=False)

    app.add_middleware(_BodyLimit, limit=max_request_bytes)
    app.add_middleware(_RequestMetrics, metrics=metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (an unparsable body: not UTF-8, nested too deeply; unknown routes)
        # in the same error shapes as ours.
        message = {400: "Request body could not be parsed: it must be UTF-8 JSON of sane depth."}.get(
            exc.status_code, str(exc.detail))
        return _error_response(request.url.path, exc.status_code, message, "BadRequestError"
                               if exc.status_code == 400 else "HTTPError")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error_response(request.url.path, 400, "Request body is not valid JSON.",
                                   "BadRequestError")
        reasons = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return _error_response(request.url.path, 422, reasons, "UnprocessableEntityError")

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        status, kind = ERROR_STATUS[type(exc)]
        return _error_response(request.url.path, status, str(exc), kind)

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                          control_token.encode()):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
        return _openai_error(401, "A valid bearer token is required for adapter control.",
                             "AuthenticationError", {"WWW-Authenticate": "Bearer"})

    def resolve_adapter(model: str | None) -> str | None:
        if model in (None, "", engine.model_name):
            return None
        if model not in engine.adapters:
            raise UnknownAdapter(f"The model `{model}` does not exist.")
        return model

    # ----- health and metadata -----

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.get("/info")
    async def info() -> dict:
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
            "version": app.version,
            "demo_model": engine.is_demo,
            "adapters": sorted(engine.adapters),
        }

    @app.get("/v1/models")
    async def models() -> p.ModelList:
        cards = [p.ModelCard(id=engine.model_name, root=engine.model_name,
                             max_model_len=engine.context_length, demo_model=engine.is_demo)]
        cards += [p.ModelCard(id=name, root=path, parent=engine.model_name,
                              max_model_len=engine.context_length, demo_model=engine.is_demo)
                  for name, path in sorted(engine.adapters.items())]
        return p.ModelList(data=cards)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ----- OpenAI chat -----

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: p.ChatCompletionRequest, request: Request) -> p.ChatCompletionResponse | StreamingResponse:
        adapter = resolve_adapter(body.model)
        prompt = engine.chat_prompt_ids([{"role": m.role, "content": m.text()} for m in body.messages])
        max_tokens = engine.check_length(len(prompt), body.token_limit or min(
            default_max_tokens, engine.context_length - len(prompt)))
        params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed, tuple(body.stop or ()),
                                body.ignore_eos)
        handle = engine.submit(prompt, adapter, params)
        if not body.stream:
            result = await _result_or_cancel(request, handle)
            metrics.finished(result)
            if result.error:
                return _openai_error(500, f"Generation failed: {result.error}", "InternalServerError")
            return p.ChatCompletionResponse(
                model=body.model, choices=[p.Choice(message=p.ResponseMessage(content=result.text),
                                                    finish_reason=OPENAI_FINISH[result.finish_reason])],
                usage=p.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                              total_tokens=result.prompt_tokens + result.completion_tokens))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chat_stream(handle, body.model, include_usage),
                                 media_type="text/event-stream")

    async def _chat_stream(handle: RequestHandle, model: str, include_usage: bool) -> AsyncIterator[bytes]:
        chunk_id, created = f"chatcmpl-{id(handle):x}{int(time.time())}", int(time.time())

        def chunk(delta: p.Delta, finish: str | None = None, usage: p.Usage | None = None) -> bytes:
            choices = [] if usage else [p.ChunkChoice(delta=delta, finish_reason=finish)]
            payload = p.ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=choices,
                                            usage=usage).model_dump(exclude_none=True)
            for choice in payload["choices"]:  # OpenAI sends an explicit null until the last chunk
                choice.setdefault("finish_reason", None)
            return _sse(json.dumps(payload))

        try:
            yield chunk(p.Delta(role="assistant", content=""))
            async for event in handle.coalesced():
                if isinstance(event, TextDelta):
                    yield chunk(p.Delta(content=event.text))
                    continue
                metrics.finished(event)
                if event.error:
                    yield _sse(json.dumps({"error": {"message": f"Generation failed: {event.error}",
                                                     "type": "InternalServerError", "code": 500}}))
                    break
                yield chunk(p.Delta(), finish=OPENAI_FINISH[event.finish_reason])
                if include_usage:
                    yield chunk(p.Delta(), usage=p.Usage(
                        prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                        total_tokens=event.prompt_tokens + event.completion_tokens))
            yield _sse("[DONE]")
        finally:
            handle.cancel()  # no-op when finished; stops decoding when the client went away

    # ----- TGI generate -----

    def _tgi_submit(body: p.GenerateRequest) -> RequestHandle:
        params = body.parameters
        adapter = resolve_adapter(params.adapter_id)
        prompt = engine.text_prompt_ids(body.inputs)
        max_tokens = engine.check_length(len(prompt), params.max_new_tokens or min(
            100, engine.context_length - len(prompt)))  # TGI's default max_new_tokens is 100
        sampling = params.do_sample or params.temperature is not None or params.top_p is not None
        temperature = (params.temperature or 1.0) if sampling else 0.0
        handle = engine.submit(prompt, adapter, SamplingParams(
            max_tokens, temperature, params.top_p or 1.0, params.seed, tuple(params.stop)))
        return handle

    def _tgi_details(result: Finished, seed: int | None) -> p.GenerateDetails:
        return p.GenerateDetails(finish_reason=TGI_FINISH[result.finish_reason],
                                 generated_tokens=result.completion_tokens, seed=seed)

    @app.post("/generate", response_model=None)
    async def generate(body: p.GenerateRequest, request: Request) -> p.GenerateResponse | JSONResponse:
        handle = _tgi_submit(body)
        result = await _result_or_cancel(request, handle)
        metrics.finished(result)
        if result.error:
            return _tgi_error(500, f"Generation failed: {result.error}", "generation")
        details = _tgi_details(result, body.parameters.seed) if body.parameters.details else None
        return p.GenerateResponse(generated_text=result.text, details=details)

    @app.post("/generate_stream")
    async def generate_stream(body: p.GenerateRequest) -> StreamingResponse:
        handle = _tgi_submit(body)

        async def events() -> AsyncIterator[bytes]:
            index = 0
            try:
                async for event in handle:
                    index += 1
                    if isinstance(event, TextDelta):
                        token = p.StreamToken(id=event.token_id, text=event.text)
                        yield _sse(p.StreamResponse(index=index, token=token).model_dump_json())
                        continue
                    metrics.finished(event)
                    if event.error:
                        yield _sse(json.dumps({"error": f"Generation failed: {event.error}",
                                               "error_type": "generation"}))
                        return
                    final = p.StreamResponse(index=index, token=p.StreamToken(id=-1, text="", special=True),
                                             generated_text=event.text,
                                             details=_tgi_details(event, body.parameters.seed))
                    yield _sse(final.model_dump_json())
            finally:
                handle.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    # ----- vLLM LoRA control -----

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(require_token)])
    async def load_lora_adapter(body: p.LoadLoraAdapterRequest) -> PlainTextResponse:
        try:
            await engine.load_adapter(body.lora_name, body.lora_path)
        except EngineError:
            metrics.adapter_loads.labels("error").inc()
            raise
        metrics.adapter_loads.labels("ok").inc()
        log.info("adapter_loaded", adapter=body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(require_token)])
    async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest) -> PlainTextResponse:
        await engine.unload_adapter(body.lora_name)
        log.info("adapter_unloaded", adapter=body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


class _Unauthorized(Exception):
    pass


class _BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413 before the app parses any of it.
    Plain ASGI, like ``_RequestMetrics``."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        if declared.isdigit():  # servers stop reading at the declared length
            await self.app(scope, receive, send)
            return
        # A chunked body declares no length: read it here, up to the limit, then hand it on.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error_response(scope["path"], 413, f"Request body is over {self.limit} bytes.",
                                   "RequestTooLargeError")
        await response(scope, receive, send)


class _RequestMetrics:
    """Counts requests by route and status, and their latency. Plain ASGI: Starlette's
    ``BaseHTTPMiddleware`` pushes every streamed chunk through extra tasks, which cost a
    third of the streaming throughput here."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            name = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
