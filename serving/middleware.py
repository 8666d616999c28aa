"""The app's plain-ASGI middleware: ``BodyLimit`` (413 for a body over the limit, before any
parsing) and ``RequestMetrics`` (request counts and latency by route and status). Plain ASGI
rather than Starlette's ``BaseHTTPMiddleware``, which pushes every streamed chunk through extra tasks.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import error_response
from serving.metrics import Metrics


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
