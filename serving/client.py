"""The client every other part uses to talk to serving: chat, adapter control, the live version.

Chat goes through huggingface_hub's (Async)InferenceClient pointed at the serving base URL, so
the same code works against the embedded engine, vLLM and TGI. Which adapter answers is what
``live_lookup`` says (``adapters.rollout.open_client`` asks the registry), cached for a few seconds;
if the lookup briefly fails the client keeps answering with the last live version it saw, and if
serving no longer has the live version (someone unloaded it) the base model answers, under its own
name, so every "answered by" shows it. HTTP only: it imports no registry. Importing this module
never imports torch.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from careloop.log import get_logger
from careloop.settings import Settings

log = get_logger(__name__)

Messages = list[dict[str, Any]]
SMOKE_PROMPT: Messages = [{"role": "user", "content": "What is hypertension?"}]
BACKGROUND_PRIORITY = 1  # vLLM's meaning: admitted after requests of priority 0 (students' questions)


class ServingUnavailable(Exception):
    """Serving cannot be reached or failed (connection refused, timeout, 5xx)."""


class ServingRejected(Exception):
    """Serving refused the request (4xx); the message is the server's reason, fit to show a user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # noqa: ANN204 - picklable across processes (Celery task errors)
        return (ServingRejected, (self.status, str(self)))


class ContextExceeded(ServingRejected):
    """Serving refused the request for not fitting the model's context (vLLM's 400 and careloop's name
    the context and the prompt's tokens): a caller can shorten the conversation or the answer.
    ``prompt_tokens`` is serving's count, or, where it refused a prompt by its length in characters before
    counting, an estimate at CHARS_PER_TOKEN."""

    CHARS_PER_TOKEN = 4  # English text through a BPE tokenizer, roughly

    def __init__(self, status: int, message: str, context_tokens: int, prompt_tokens: int):
        super().__init__(status, message)
        self.context_tokens, self.prompt_tokens = context_tokens, prompt_tokens

    def __reduce__(self):  # noqa: ANN204 - picklable across processes (Celery task errors)
        return (ContextExceeded, (self.status, str(self), self.context_tokens, self.prompt_tokens))


class ControlUnsupported(Exception):
    """The backend cannot load adapters at runtime (TGI): the message says what to do instead."""


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    model: str  # the adapter version (or base model) that answered
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass(frozen=True)
class ChatDelta:
    text: str
    model: str
    finish_reason: str | None = None  # set on the last delta


class ServingClient:
    """Chat and control against one serving base URL.

    ``live_lookup`` returns the live adapter name (None: the base model answers); it is
    called at most every ``cache_seconds`` and its failures fall back to the last answer. A chat
    that names no model and finds the live version missing from serving is answered by the base
    model (``_base_instead``).
    ``replicas``: the base URLs of each server behind ``url`` when it is a load balancer; adapter
    control has to reach every one of them (see ``replicas()``).
    """

    def __init__(self, url: str, *, token: str | None = None, backend: str = "embedded",
                 live_lookup: Callable[[], str | None] | None = None, cache_seconds: float = 2.0,
                 timeout: float = 120.0, replicas: Sequence[str] = ()):
        self.url = url.rstrip("/")
        self._replica_urls = list(replicas)
        self._replicas: list[ServingClient] | None = None
        self.backend = backend
        self._token = token
        self._timeout = timeout
        self._live_lookup = live_lookup
        self._cache_seconds = cache_seconds
        self._live: tuple[float, str | None] | None = None  # (monotonic time read, name)
        self._missing_live: str | None = None  # the live version serving said it does not have
        self._lock = threading.Lock()
        self._base_model: str | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        # vLLM started with --api-key guards chat too; the embedded engine and TGI guard only control.
        chat_key = token if backend == "vllm" else None
        self._inference = InferenceClient(base_url=self.url, timeout=timeout, api_key=chat_key)
        self._async_inference = AsyncInferenceClient(base_url=self.url, timeout=timeout, api_key=chat_key)

    @classmethod
    def from_settings(cls, settings: Settings, *, base_model: str | None = None, timeout: float | None = None,
                      **kwargs: Any) -> ServingClient:
        """A client for CARELOOP_SERVING_URL, waiting ``timeout`` seconds for an answer (default
        CARELOOP_SERVING_TIMEOUT). Without a ``live_lookup`` the base model answers what names no
        model; ``adapters.rollout.open_client`` gives one that asks the registry."""
        client = cls(settings.serving_url, token=settings.resolved_control_token(),
                     backend=settings.serving_backend, cache_seconds=settings.live_cache_seconds,
                     timeout=timeout or settings.serving_timeout, replicas=settings.serving_replica_urls, **kwargs)
        client._base_model = base_model
        return client

    def close(self) -> None:
        self._http.close()
        for replica in self._replicas or []:
            if replica is not self:
                replica.close()

    def replicas(self) -> list[ServingClient]:
        """One client per serving replica, for loading, unloading and smoke-testing a version on
        each; just this client when there is one server."""
        if self._replicas is None:
            self._replicas = [ServingClient(url, token=self._token, backend=self.backend, timeout=self._timeout)
                              for url in self._replica_urls] or [self]
        return self._replicas

    def loaded_everywhere(self) -> set[str]:
        """The adapters every serving replica has loaded."""
        return set.intersection(*(set(replica.loaded_adapters()) for replica in self.replicas()))

    # ----- what answers -----

    def health(self) -> bool:
        try:
            return self._http.get("/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> list[dict[str, Any]]:
        """``/v1/models``: the base model first, then the loaded adapters."""
        return self._get("/v1/models").json()["data"]

    def base_model(self) -> str:
        if self._base_model is None:
            self._base_model = self.models()[0]["id"]
        return self._base_model

    def loaded_adapters(self) -> list[str]:
        return [card["id"] for card in self.models()[1:]]

    def is_demo(self) -> bool:
        """Whether the base model is unfit for clinical use (the offline default, the tiny test model):
        serving says so."""
        cards = self.models()
        return bool(cards and cards[0].get("demo_model"))

    def live_version(self) -> str | None:
        """The live adapter version from the registry (cached); None when the base model answers."""
        if self._live_lookup is None:
            return None
        with self._lock:
            now = time.monotonic()
            if self._live is not None and now - self._live[0] < self._cache_seconds:
                return self._live[1]
            try:
                name = self._live_lookup()
            except Exception as exc:  # noqa: BLE001 - any database failure: keep serving the last version
                if self._live is None:
                    raise ServingUnavailable(f"the adapter registry is unreachable ({exc.__class__.__name__}) "
                                             "and no live version is known yet") from exc
                log.warning("registry_unreachable_using_last_live", adapter=self._live[1],
                            error=exc.__class__.__name__)
                return self._live[1]
            self._live = (now, name)
            return name

    def in_background(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` for work nobody waits on (review answers): careloop's serving admits students'
        questions before it. Sent to careloop's engine only: vLLM refuses a priority unless it was
        started with ``--scheduling-policy priority``, and TGI has none."""
        if self.backend != "embedded":
            return params
        return {**params, "extra_body": {**params.get("extra_body", {}), "priority": BACKGROUND_PRIORITY}}

    def resolve_model(self, model: str | None = None) -> str:
        return model or self.live_version() or self.base_model()

    # ----- chat -----

    def chat(self, messages: Messages, *, model: str | None = None, shorten: bool = True,
             **params: Any) -> ChatAnswer:
        """One whole answer. ``params``: max_tokens, temperature, top_p, seed, stop. ``shorten``: an
        answer longer than the context leaves is cut to the room there is (else ContextExceeded)."""
        name = self.resolve_model(model)
        started = time.perf_counter()
        try:
            out = self._complete(messages, name, params, shorten)
        except ServingRejected as exc:
            name = self._base_instead(model, name, exc)
            out = self._complete(messages, name, params, shorten)
        else:
            self._answered(name)
        choice = out.choices[0]
        return ChatAnswer(choice.message.content or "", out.model or name, choice.finish_reason,
                          out.usage.prompt_tokens, out.usage.completion_tokens, time.perf_counter() - started)

    def stream_chat(self, messages: Messages, *, model: str | None = None, shorten: bool = True,
                    **params: Any) -> Iterator[ChatDelta]:
        """The answer as it is written; ``shorten`` as in ``chat``."""
        name = self.resolve_model(model)
        started = False
        try:
            for delta in self._stream(messages, name, shorten, **params):
                if not started:
                    started = True
                    self._answered(name)
                yield delta
        except ServingRejected as exc:
            if started:
                raise
            yield from self._stream(messages, self._base_instead(model, name, exc), shorten, **params)

    def _complete(self, messages: Messages, name: str, params: dict[str, Any],
                  shorten: bool) -> Any:  # noqa: ANN401
        try:
            with _translated_errors():
                return self._inference.chat_completion(messages, model=name, **params)
        except ContextExceeded as exc:
            if not shorten or (fitted := _fitted(params, exc)) is None:
                raise
        with _translated_errors():
            return self._inference.chat_completion(messages, model=name, **fitted)

    def _stream(self, messages: Messages, name: str, shorten: bool, **params: Any) -> Iterator[ChatDelta]:
        started = False
        try:
            for delta in self._stream_once(messages, name, params):
                started = True
                yield delta
        except ContextExceeded as exc:
            if started or not shorten or (fitted := _fitted(params, exc)) is None:
                raise
            yield from self._stream_once(messages, name, fitted)

    def _stream_once(self, messages: Messages, name: str, params: dict[str, Any]) -> Iterator[ChatDelta]:
        with _translated_errors():
            for chunk in self._inference.chat_completion(messages, model=name, stream=True, **params):
                if chunk.choices:
                    choice = chunk.choices[0]
                    yield ChatDelta(choice.delta.content or "", chunk.model or name, choice.finish_reason)

    async def astream_chat(self, messages: Messages, *, model: str | None = None,
                           **params: Any) -> AsyncIterator[ChatDelta]:
        name = self.resolve_model(model)
        started = False
        try:
            async for delta in self._astream(messages, name, **params):
                if not started:
                    started = True
                    self._answered(name)
                yield delta
        except ServingRejected as exc:
            if started:
                raise
            async for delta in self._astream(messages, self._base_instead(model, name, exc), **params):
                yield delta

    async def _astream(self, messages: Messages, name: str, **params: Any) -> AsyncIterator[ChatDelta]:
        with _translated_errors():
            stream = await self._async_inference.chat_completion(messages, model=name, stream=True, **params)
            async for chunk in stream:
                if chunk.choices:
                    choice = chunk.choices[0]
                    yield ChatDelta(choice.delta.content or "", chunk.model or name, choice.finish_reason)

    def _base_instead(self, asked: str | None, used: str, error: ServingRejected) -> str:
        """The base model's name, when ``used`` is the live version this client chose itself and
        serving says it does not exist; otherwise ``error`` again. Issue 31, 12: the live version
        unloaded (by hand, or by a cleanup racing a promotion) made every chat fail until someone
        reloaded it. The answer carries the base model's name, so whatever shows which version
        answered shows the base model (and its not-for-clinical-use label, if it has one); the
        warning is logged once per version, not per chat."""
        if asked is not None or error.status != 404 or used == (base := self.base_model()):
            raise error
        with self._lock:
            first, self._missing_live = self._missing_live != used, used
        if first:
            log.warning("live_version_not_loaded_base_model_answers", adapter=used, base_model=base,
                        reason=str(error))
        return base

    def _answered(self, name: str) -> None:
        """``name`` answered: if it is the live version that was missing, say it is back."""
        if self._missing_live != name:
            return
        with self._lock:
            self._missing_live = None
        log.info("live_version_answers_again", adapter=name)

    def smoke_test(self, model: str) -> ChatAnswer:
        """A short greedy answer from ``model`` through the public API, or an exception saying why not."""
        answer = self.chat(SMOKE_PROMPT, model=model, max_tokens=8, temperature=0)
        if answer.model != model or answer.completion_tokens < 1:
            raise ServingUnavailable(f"smoke test of {model} failed: answered by {answer.model!r} "
                                     f"with {answer.completion_tokens} tokens")
        return answer

    # ----- adapter control (vLLM's routes) -----

    def load_adapter(self, name: str, path: str) -> None:
        self._control("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> None:
        self._control("/v1/unload_lora_adapter", {"lora_name": name})

    def _control(self, route: str, body: dict[str, str]) -> None:
        if self.backend == "tgi":
            raise ControlUnsupported(
                "TGI loads LoRA adapters only at launch: add the version to LORA_ADAPTERS and restart "
                "the TGI container (see README, 'Serving backends'), then promote again.")
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            response = self._http.post(route, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(f"serving at {self.url} is unreachable: {exc}") from exc
        _raise_for_status(response)

    def _get(self, route: str) -> httpx.Response:
        # vLLM's --api-key guards every /v1 route, /v1/models included.
        headers = {"Authorization": f"Bearer {self._token}"} if self._token and self.backend == "vllm" else {}
        try:
            response = self._http.get(route, headers=headers)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(f"serving at {self.url} is unreachable: {exc}") from exc
        _raise_for_status(response)
        return response


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    message = _server_message(response.text) or response.reason_phrase
    if response.status_code >= 500:
        raise ServingUnavailable(f"serving failed ({response.status_code}): {message}")
    raise _rejection(response.status_code, message)


def _rejection(status: int, message: str) -> ServingRejected:
    """``message`` as ContextExceeded when it says the request does not fit the context, else as
    ServingRejected."""
    if status == 400:
        if match := _CONTEXT_EXCEEDED.search(message):
            return ContextExceeded(status, message, int(match[1]), int(match[2]))
        if match := _PROMPT_EXCEEDS_CONTEXT.search(message):
            return ContextExceeded(status, message, int(match[2]), int(match[1]))
        if match := _PROMPT_CHARS_EXCEED_CONTEXT.search(message):
            characters = int(match[1].replace(",", ""))
            return ContextExceeded(status, message, int(match[2]), -(-characters // ContextExceeded.CHARS_PER_TOKEN))
    return ServingRejected(status, message)


def _server_message(body: str) -> str:
    """The reason in an OpenAI-style ``{"error": {"message"}}`` or TGI-style ``{"error": "..."}`` body."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body.strip()[:500]
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return str(error or "")


# vLLM's and careloop's words for a prompt and answer over the context (context, then prompt tokens),
# and careloop's for a prompt that alone fills it (prompt, then context), in tokens or in characters.
_CONTEXT_EXCEEDED = re.compile(r"maximum context length is (\d+) tokens.*?\((\d+) in the messages", re.DOTALL)
_PROMPT_EXCEEDS_CONTEXT = re.compile(r"prompt is (\d+) tokens; this model's context is (\d+) tokens")
_PROMPT_CHARS_EXCEED_CONTEXT = re.compile(r"prompt is ([\d,]+) characters; this model's context is (\d+) tokens")


def _fitted(params: dict[str, Any], error: ContextExceeded) -> dict[str, Any] | None:
    """``params`` with ``max_tokens`` cut to the room the context leaves: a long question, or a small
    model's context, gets a shorter answer rather than none. None when there is no room at all."""
    if not params.get("max_tokens"):
        return None
    room = error.context_tokens - error.prompt_tokens
    return {**params, "max_tokens": room} if 0 < room < params["max_tokens"] else None


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn huggingface_hub / transport exceptions into ServingRejected / ServingUnavailable."""
    try:
        yield
    except (ServingRejected, ServingUnavailable):
        raise
    except HfHubHTTPError as exc:
        if exc.response is None:
            raise ServingUnavailable(f"serving is unreachable: {exc}") from exc
        status = exc.response.status_code
        message = _server_message(exc.response.text) or str(exc)
        if status < 500:
            raise _rejection(status, message) from exc
        raise ServingUnavailable(f"serving failed ({status}): {message}") from exc
    except (httpx2.HTTPError, OSError, TimeoutError) as exc:  # huggingface_hub's transport (httpx2)
        raise ServingUnavailable(f"serving is unreachable: {exc.__class__.__name__}: {exc}") from exc
