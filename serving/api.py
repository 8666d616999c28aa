"""The serving app: the OpenAI, TGI and adapter-control routers (``serving/routes/``) joined on one
FastAPI app with what they share: the app state (``serving.state``), Prometheus metrics
(``serving.metrics``), middleware (``serving.middleware``) and error shapes (``serving.errors``).

HTTP concerns only (parsing, status codes, SSE, auth, metrics); generation lives in ``engine.py``.
"""

from __future__ import annotations

from fastapi import FastAPI

from careloop.decoding import DEFAULT, Decoding
from serving.engine import Engine
from serving.errors import install_error_handlers
from serving.metrics import Metrics
from serving.middleware import BodyLimit, RequestMetrics
from serving.routes import control, openai, tgi
from serving.state import ServingState


def create_app(engine: Engine, control_token: str, decoding: Decoding = DEFAULT,
               max_request_bytes: int = 8 * 1024 * 1024, max_prompt_chars_per_token: float = 8.0) -> FastAPI:
    app = FastAPI(title="careloop serving", version="0.1.0",
                  description="OpenAI- and TGI-compatible API over careloop's embedded engine.")
    metrics = Metrics(engine)
    app.state.serving = ServingState(engine, metrics, control_token, decoding, max_prompt_chars_per_token)
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    install_error_handlers(app)
    for router in (tgi.router, openai.router, control.router):
        app.include_router(router)
    return app
