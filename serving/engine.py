"""The embedded inference engine: one base model, many LoRA adapters, batched decoding on one thread.

Requests from any number of HTTP clients are queued; the engine thread takes up to ``max_batch`` of
them at a time (any mix of adapters, via PEFT's per-row ``adapter_names``), decodes them token by
token with a shared KV cache, and streams each row's text back to its own asyncio queue. Adapter
loads run on the engine thread *between* decode steps, so a load never races a forward pass and
requests in flight keep going; an unload waits until no queued or running request uses it.

This engine is for a laptop or CPU box; production swaps in vLLM or TGI behind the same HTTP API.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from careloop.log import get_logger

log = get_logger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class EngineError(Exception):
    """Base class for request errors the API turns into 4xx responses."""


class QueueFull(EngineError):
    pass


class UnknownAdapter(EngineError):
    pass


class AdapterExists(EngineError):
    pass


class AdapterLoadError(EngineError):
    pass


class PromptTooLong(EngineError):
    pass


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class TextDelta:
    text: str
    token_id: int


@dataclass
class Finished:
    text: str
    finish_reason: str  # "eos" | "stop_sequence" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    adapter: str | None
    first_token_seconds: float | None = None
    error: str | None = None  # set when the engine failed this request (finish_reason "error")


@dataclass
class _Request:
    id: int
    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    finished: bool = False
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    first_token_at: float | None = None
    generator: torch.Generator | None = None

    def emit(self, event: TextDelta | Finished) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class RequestHandle:
    """What ``submit`` returns: an async stream of ``TextDelta`` ending with one ``Finished``."""

    def __init__(self, request: _Request):
        self._request = request

    def cancel(self) -> None:
        self._request.cancelled = True

    async def __aiter__(self) -> AsyncIterator[TextDelta | Finished]:
        while True:
            event = await self._request.events.get()
            yield event
            if isinstance(event, Finished):
                return

    async def result(self) -> Finished:
        async for event in self:
            if isinstance(event, Finished):
                return event
        raise RuntimeError("stream ended without a result")  # pragma: no cover - __aiter__ guarantees it


@dataclass
class EngineStats:
    queued: int = 0
    running: int = 0


class Engine:
    def __init__(self, model_source: str, model_name: str, is_demo: bool, max_batch: int = 8,
                 max_queue: int = 64, context_length: int | None = None, adapter_dir: Path | None = None,
                 device: str = "cpu"):
        self.model_name = model_name
        self.is_demo = is_demo
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.adapter_dir = adapter_dir.resolve() if adapter_dir else None
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_source)
        self.model = AutoModelForCausalLM.from_pretrained(model_source).to(self.device).eval()
        model_limit = getattr(self.model.config, "max_position_embeddings", 2048)
        self.context_length = min(context_length or model_limit, model_limit)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.stats = EngineStats()

        self._adapters: dict[str, str] = {}  # name -> path, only touched on the engine thread
        self._inflight: dict[str, int] = {}  # adapter -> queued + running requests
        self._draining: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._pending_loads: deque[tuple[str, str, asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._waiting: deque[_Request] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="careloop-engine", daemon=True)
        self._thread.start()

    # ----- public API (called from the event loop) -----

    @property
    def adapters(self) -> dict[str, str]:
        with self._lock:
            return dict(self._adapters)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)["input_ids"])

    def text_prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_length(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """Validate the prompt against the context window; return the max_tokens to use."""
        if prompt_tokens >= self.context_length:
            raise PromptTooLong(f"The prompt is {prompt_tokens} tokens; this model's context is "
                                f"{self.context_length} tokens.")
        room = self.context_length - prompt_tokens
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise PromptTooLong(f"This model's maximum context length is {self.context_length} tokens. "
                                f"However, you requested {prompt_tokens + max_tokens} tokens "
                                f"({prompt_tokens} in the messages, {max_tokens} in the completion).")
        return max_tokens

    def submit(self, prompt_ids: list[int], adapter: str | None, params: SamplingParams) -> RequestHandle:
        loop = asyncio.get_running_loop()
        with self._lock:
            if adapter is not None and (adapter not in self._adapters or adapter in self._draining):
                raise UnknownAdapter(f"The model `{adapter}` does not exist.")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"The server is busy ({len(self._waiting)} requests queued); retry shortly.")
            request = _Request(next(self._ids), prompt_ids, adapter, params, loop, asyncio.Queue())
            if params.temperature > 0:
                request.generator = torch.Generator().manual_seed(
                    params.seed if params.seed is not None else torch.seed())
            if adapter is not None:
                self._inflight[adapter] = self._inflight.get(adapter, 0) + 1
            self._waiting.append(request)
            self.stats.queued = len(self._waiting)
            self._wake.notify()
        return RequestHandle(request)

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter under an immutable name; raises AdapterExists / AdapterLoadError."""
        if self.adapter_dir is not None:
            resolved = Path(path).resolve()
            if not resolved.is_relative_to(self.adapter_dir):
                raise AdapterLoadError(f"lora_path must be inside the adapter directory {self.adapter_dir}")
        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterLoadError(f"No LoRA adapter at {path!r} (adapter_config.json missing).")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if name in self._adapters or any(p[0] == name for p in self._pending_loads):
                raise AdapterExists(f"The lora adapter `{name}` has already been loaded; adapter "
                                    "names are immutable versions, load a new version instead.")
            self._pending_loads.append((name, path, loop, future))
            self._wake.notify()
        await future

    async def unload_adapter(self, name: str) -> None:
        """Stop routing new requests to ``name``; return once the requests using it have finished."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if name not in self._adapters:
                raise UnknownAdapter(f"The lora adapter `{name}` cannot be found.")
            self._draining.setdefault(name, []).append((loop, future))
            self._wake.notify()
        await future

    def shutdown(self) -> None:
        with self._lock:
            self._running = False
            self._wake.notify()
        self._thread.join(timeout=30)

    # ----- engine thread -----

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._running and not (self._waiting or self._pending_loads or self._draining):
                    self._wake.wait()
                if not self._running:
                    return
                batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
                self.stats.queued = len(self._waiting)
                self.stats.running = len(batch)
            try:
                self._apply_control()
                if batch:
                    self._decode(batch)
            except Exception as exc:  # noqa: BLE001 - fail these requests, keep serving the others
                log.exception("engine_step_failed", batch=len(batch))
                for request in batch:
                    if not request.finished:
                        self._finish(request, "error", error=f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.stats.running = 0

    def _apply_control(self) -> None:
        """Adapter loads and finished drains; runs on the engine thread between forward passes."""
        while True:
            with self._lock:
                if not self._pending_loads:
                    break
                name, path, loop, future = self._pending_loads.popleft()
            try:
                self._attach_adapter(name, path)
            except Exception as exc:  # noqa: BLE001 - a bad adapter file must not kill the engine
                loop.call_soon_threadsafe(_settle, future, AdapterLoadError(
                    f"Loading adapter {name!r} from {path!r} failed: {type(exc).__name__}: {exc}"))
                continue
            with self._lock:
                self._adapters[name] = path
            loop.call_soon_threadsafe(_settle, future, None)
        with self._lock:
            done = [name for name in self._draining if self._inflight.get(name, 0) == 0]
        for name in done:
            self.model.delete_adapter(name)
            if not set(self.model.peft_config) - {name}:
                # PEFT keeps a deleted last adapter "active"; go back to the plain base model.
                self.model = self.model.unload()
            with self._lock:
                del self._adapters[name]
                self._inflight.pop(name, None)
                waiters = self._draining.pop(name)
            for loop, future in waiters:
                loop.call_soon_threadsafe(_settle, future, None)

    def _attach_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()

    @torch.inference_mode()
    def _decode(self, batch: list[_Request]) -> None:
        from peft import PeftModel

        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):  # left padding keeps every row's next token at the end
            input_ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            attention[row, width - len(request.prompt_ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        adapter_names = [r.adapter or BASE_ADAPTER for r in batch]
        active = [True] * len(batch)
        past = None
        step_ids, step_positions = input_ids, positions
        while any(active):
            # Re-checked every step: the first adapter load wraps the base model in a PeftModel.
            extra = {"adapter_names": adapter_names} if isinstance(self.model, PeftModel) else {}
            output = self.model(input_ids=step_ids.to(self.device), attention_mask=attention.to(self.device),
                                position_ids=step_positions.to(self.device), past_key_values=past,
                                use_cache=True, **extra)
            past = output.past_key_values
            logits = output.logits[:, -1, :].float().cpu()
            next_ids = torch.full((len(batch),), self.pad_id, dtype=torch.long)
            for row, request in enumerate(batch):
                if not active[row]:
                    continue
                if request.cancelled:
                    active[row] = False
                    self._finish(request, "cancelled")
                    continue
                token = self._sample(logits[row], request)
                next_ids[row] = token
                active[row] = self._advance(request, token)
            # A finished row no longer holds its adapter (it may be unloaded mid-batch): decode it as base.
            for row, still_running in enumerate(active):
                if not still_running:
                    adapter_names[row] = BASE_ADAPTER
            self._apply_control()  # loads land between steps; requests in flight keep decoding
            step_ids = next_ids.unsqueeze(1)
            attention = torch.cat([attention, torch.ones((len(batch), 1), dtype=torch.long)], dim=1)
            step_positions = step_positions[:, -1:] + 1

    @staticmethod
    def _sample(logits: torch.Tensor, request: _Request) -> int:
        params = request.params
        if params.temperature <= 0 or request.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=request.generator))

    def _advance(self, request: _Request, token: int) -> bool:
        """Record one generated token, stream the new text; return whether the request goes on."""
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in self.eos_ids and not request.params.ignore_eos:
            self._emit_text(request, final=True)
            self._finish(request, "eos")
            return False
        request.generated.append(token)
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        for stop in request.params.stop:
            cut = text.find(stop)
            if cut != -1:
                self._emit_text(request, final=True, text=text[:cut])
                self._finish(request, "stop_sequence", text=text[:cut])
                return False
        if len(request.generated) >= request.params.max_tokens:
            self._emit_text(request, final=True, text=text)
            self._finish(request, "length", text=text)
            return False
        self._emit_text(request, final=False, text=text, token=token)
        return True

    def _emit_text(self, request: _Request, final: bool, text: str | None = None, token: int = -1) -> None:
        if text is None:
            text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        safe = len(text)
        if not final:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next byte
                return
            # Hold back a tail that could still become a stop string.
            for stop in request.params.stop:
                for k in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:k]):
                        safe = min(safe, len(text) - k)
                        break
        if safe > request.sent_chars:
            request.emit(TextDelta(text[request.sent_chars:safe], token))
            request.sent_chars = safe

    def _finish(self, request: _Request, reason: str, text: str | None = None,
                error: str | None = None) -> None:
        if text is None:
            text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        request.finished = True
        with self._lock:
            if request.adapter is not None:
                self._inflight[request.adapter] -= 1
        first = request.first_token_at - request.submitted if request.first_token_at else None
        request.emit(Finished(text, reason, len(request.prompt_ids), len(request.generated),
                              request.adapter, first, error))


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
