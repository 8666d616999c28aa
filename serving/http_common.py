"""What every serving route shares: the app's state, Prometheus metrics, the two error shapes
(OpenAI's and TGI's) with their exception handlers, and the plain-ASGI middleware (body limit,
request metrics). The routers in ``serving/routes/`` hold the endpoints; ``serving/api.py`` joins them.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.engine import (AdapterExists, AdapterLoadError, Engine, EngineError, Finished, PromptTooLong,
                            QueueFull, RequestHandle, UnknownAdapter)

# engine error -> (HTTP status, OpenAI error type)
ERROR_STATUS: dict[type[EngineError], tuple[int, str]] = {
    PromptTooLong: (400, "BadRequestError"),
    UnknownAdapter: (404, "NotFoundError"),
    AdapterExists: (409, "ConflictError"),
    AdapterLoadError: (400, "BadRequestError"),
    QueueFull: (429, "ServiceUnavailableError"),
}
RETRY_AFTER_SECONDS = "1"


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


@dataclass
class ServingState:
    """What the routes need, kept on ``app.state.serving`` (no closures, no globals)."""

    engine: Engine
    metrics: Metrics
    control_token: str
    default_max_tokens: int
    max_prompt_chars_per_token: float = 8.0

    def holds_token(self, credentials: HTTPAuthorizationCredentials | None) -> bool:
        return credentials is not None and hmac.compare_digest(credentials.credentials.encode(),
                                                                self.control_token.encode())

    async def prompt_ids(self, characters: int, tokenize: Callable[..., list[int]], *args: object) -> list[int]:
        """``tokenize(*args)`` in a worker thread, so a long prompt does not stall the event loop (and
        with it every other request and ``/health``); a prompt of more ``characters`` than could fit
        in the context is refused (400) before any tokenizing."""
        limit = int(self.engine.context_length * self.max_prompt_chars_per_token)
        if characters > limit:
            raise PromptTooLong(f"The prompt is {characters:,} characters; this model's context is "
                                f"{self.engine.context_length} tokens, so at most {limit:,} characters are accepted.")
        return await run_in_threadpool(tokenize, *args)

    def resolve_adapter(self, model: str | None) -> str | None:
        """The adapter a request names, None for the base model; an unknown name is a 404."""
        if model in (None, "", self.engine.model_name):
            return None
        if model not in self.engine.adapters:
            raise UnknownAdapter(f"The model `{model}` does not exist.")
        return model


def _serving_state(request: Request) -> ServingState:
    return request.app.state.serving


State = Annotated[ServingState, Depends(_serving_state)]
bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


# ----- error shapes -----

def openai_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status, headers=headers)


def tgi_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)


def error_response(path: str, status: int, message: str, kind: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in (429, 503) else None
    if path.startswith("/generate"):
        return tgi_error(status, message, "overloaded" if status == 429 else "validation", headers)
    return openai_error(status, message, kind, headers)


class Unauthorized(Exception):
    """A control call without the right bearer token (answered 401 by the handler below)."""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (an unparsable body: not UTF-8, nested too deeply; unknown routes)
        # in the same error shapes as ours.
        message = {400: "Request body could not be parsed: it must be UTF-8 JSON of sane depth."}.get(
            exc.status_code, str(exc.detail))
        return error_response(request.url.path, exc.status_code, message, "BadRequestError"
                              if exc.status_code == 400 else "HTTPError")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(request.url.path, 400, "Request body is not valid JSON.",
                                  "BadRequestError")
        reasons = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return error_response(request.url.path, 422, reasons, "UnprocessableEntityError")

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        status, kind = ERROR_STATUS[type(exc)]
        return error_response(request.url.path, status, str(exc), kind)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return openai_error(401, "A valid bearer token is required for adapter control.",
                            "AuthenticationError", {"WWW-Authenticate": "Bearer"})


# ----- generation helpers shared by the OpenAI and TGI routes -----

def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    handle.cancel()


async def result_or_cancel(request: Request, handle: RequestHandle) -> Finished:
    """Wait for a non-streaming result; a client that hangs up cancels its generation."""
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    try:
        return await handle.result()
    finally:
        watcher.cancel()


# ----- middleware -----

class BodyLimit:
    """Refuses a request body over ``limit`` bytes with 413 before the app parses any of it.
    Plain ASGI, like ``RequestMetrics``."""

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
        response = error_response(scope["path"], 413, f"Request body is over {self.limit} bytes.",
                                  "RequestTooLargeError")
        await response(scope, receive, send)


class RequestMetrics:
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
