"""The serving app's state (``ServingState``: engine, metrics, control token, limits) and the FastAPI
dependencies that hand it and the caller's bearer credentials to a route (``State``, ``Credentials``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from careloop.decoding import Decoding
from serving.engine import Engine, PromptTooLong, UnknownAdapter
from serving.metrics import Metrics


@dataclass
class ServingState:
    """What the routes need, kept on ``app.state.serving`` (no closures, no globals)."""

    engine: Engine
    metrics: Metrics
    control_token: str
    decoding: Decoding  # what a request that sets no sampling parameters gets
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
