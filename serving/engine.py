"""The embedded inference engine: one base model, many LoRA adapters, batched decoding on one thread.

Requests from any number of HTTP clients are queued; the engine thread decodes up to ``max_batch``
of them together (any mix of adapters, via PEFT's per-row ``adapter_names``) token by token with a
shared KV cache, and streams each row's text back to its own asyncio queue. Batching is
continuous: between two decode steps, waiting requests are prefilled and join the running batch,
and finished rows leave it. Waiting requests are admitted by priority (lower first, as vLLM's
``priority``), then in order of arrival: a student's question overtakes queued review answers. Adapter
loads run on the engine thread *between* decode steps, so a load never races a forward pass and
requests in flight keep going; an unload waits until no queued or running request uses it. What a
load request names is checked and copied in one go (``_snapshot_adapter``) and the engine loads the
copy, so a directory swapped for a symlink after the check cannot redirect the load.

This engine is for a laptop or CPU box; production swaps in vLLM or TGI behind the same HTTP API.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, DynamicLayer

from careloop.log import get_logger

log = get_logger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what PEFT reads, in its order


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
    repetition_penalty: float = 1.0  # transformers' meaning: over the prompt's and the answer's tokens
    priority: int = 0  # lower is admitted first (vLLM's meaning); background work sends a higher one


@dataclass
class TextDelta:
    text: str
    token_id: int


FINISH_REASONS = ("eos", "stop_sequence", "length", "cancelled", "error")


@dataclass
class Finished:
    text: str
    finish_reason: str  # one of FINISH_REASONS
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
    penalized: set[int] | None = None  # the prompt's and answer's tokens, with a repetition penalty

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

    async def coalesced(self) -> AsyncIterator[TextDelta | Finished]:
        """Like iterating, but text that piled up while the consumer was busy comes as one delta:
        under load a streaming client gets fewer, larger chunks instead of falling behind."""
        events = self._request.events
        while True:
            event = await events.get()
            while isinstance(event, TextDelta) and not events.empty():
                following = events.get_nowait()
                if not isinstance(following, TextDelta):
                    yield event
                    event = following
                    break
                event = TextDelta(event.text + following.text, following.token_id)
            yield event
            if isinstance(event, Finished):
                return

    async def result(self) -> Finished:
        async for event in self:
            if isinstance(event, Finished):
                return event
        raise RuntimeError("stream ended without a result")  # pragma: no cover - __aiter__ guarantees it


class _Batch:
    """The rows decoding together and their shared KV cache.

    Invariant between steps: the cache holds every row's tokens so far (left-padded to one
    length); ``next_ids`` are the tokens to feed next, at ``positions``; ``attention`` covers the
    cache plus that next token.
    """

    def __init__(self, rows: list[_Request], cache: DynamicCache, attention: torch.Tensor,
                 last_positions: torch.Tensor, adapter_names: list[str], logits: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.attention = torch.cat([attention, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        self.positions = last_positions + 1
        self.adapter_names = adapter_names
        self.logits = logits
        self.next_ids = torch.empty(0, dtype=torch.long)
        self.mergeable = all(type(layer) is DynamicLayer for layer in cache.layers)

    def advanced(self) -> None:
        """The cache took one more token per row."""
        self.attention = torch.cat([self.attention, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        self.positions = self.positions + 1

    def merge(self, other: _Batch) -> _Batch:
        """Append ``other``'s rows, left-padding the shorter cache (padding is masked out)."""
        length = max(self.cache_length, other.cache_length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        self.attention = torch.cat([_left_pad(self.attention, length + 1, dim=1),
                                    _left_pad(other.attention, length + 1, dim=1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows
        self.adapter_names += other.adapter_names
        return self

    @property
    def cache_length(self) -> int:
        return self.attention.shape[1] - 1

    def select(self, keep: list[int], next_ids: list[int]) -> _Batch | None:
        """Keep only the rows still generating, and drop cache columns no row attends to any more."""
        if not keep:
            return None
        if len(keep) < len(self.rows):
            index = torch.tensor(keep)
            self.cache.batch_select_indices(index.to(self.cache.layers[0].keys.device))
            self.attention = self.attention[index]
            self.positions = self.positions[index]
            self.rows = [self.rows[i] for i in keep]
            self.adapter_names = [self.adapter_names[i] for i in keep]
            unused = int((self.attention.sum(0) > 0).int().argmax())
            if unused > 0 and self.mergeable:
                self.attention = self.attention[:, unused:]
                for layer in self.cache.layers:
                    layer.keys = layer.keys[..., unused:, :]
                    layer.values = layer.values[..., unused:, :]
        self.next_ids = torch.tensor(next_ids, dtype=torch.long)
        return self


def _left_pad(tensor: torch.Tensor, length: int, dim: int = -2) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


@dataclass
class EngineStats:
    queued: int = 0
    running: int = 0
    # Counters since start, written by the engine thread only: what batching really did.
    batched_steps: int = 0  # forward passes that decoded or prefilled more than one request together
    mixed_adapter_steps: int = 0  # forward passes whose rows used more than one adapter (or the base model)
    joined_running_batch: int = 0  # requests prefilled into a batch that was already decoding


class Engine:
    def __init__(self, model_source: str, model_name: str, is_demo: bool, max_batch: int = 8,
                 max_queue: int = 64, context_length: int | None = None, adapter_dir: Path | None = None,
                 device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.model_name = model_name
        self.is_demo = is_demo
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.adapter_dir = adapter_dir.resolve() if adapter_dir else None
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_source)
        self.dtype = dtype
        self.model = AutoModelForCausalLM.from_pretrained(model_source, dtype=dtype).to(self.device).eval()
        model_limit = getattr(self.model.config, "max_position_embeddings", 2048)
        self.context_length = min(context_length or model_limit, model_limit)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.stats = EngineStats()

        self._adapters: dict[str, str] = {}  # name -> path, only touched on the engine thread
        self._inflight: dict[str, int] = {}  # adapter -> queued + running requests
        self._draining: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._pending_loads: deque[_PendingLoad] = deque()
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
        with self._lock:
            self._refuse_taken(name)
        snapshot, directory = await asyncio.to_thread(self._snapshot_adapter, path)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            with self._lock:
                self._refuse_taken(name)
                self._pending_loads.append(_PendingLoad(name, directory, snapshot, loop, future))
                self._wake.notify()
        except AdapterExists:
            snapshot.cleanup()
            raise
        await future

    def _refuse_taken(self, name: str) -> None:
        if name in self._adapters or any(load.name == name for load in self._pending_loads):
            raise AdapterExists(f"The lora adapter `{name}` has already been loaded; adapter "
                                "names are immutable versions, load a new version instead.")

    def _snapshot_adapter(self, path: str) -> tuple[tempfile.TemporaryDirectory, str]:
        """Copy the adapter's files at ``path`` into a private directory; return it and the adapter's
        real directory. Issue 31, 11: the check resolved ``path`` but PEFT loaded it by name later, so
        a directory swapped for a symlink in between loaded an adapter from outside the adapter
        directory. Here each file is opened along its resolved path with no symlink followed, checked
        to be inside the adapter directory, and copied; PEFT loads the copy, which nobody else can
        change. Symlinks that stay inside the adapter directory still work (they are resolved first)."""
        root = self.adapter_dir or Path(Path(path).resolve().anchor)
        directory = Path(path).resolve()
        if not directory.is_relative_to(root):
            raise AdapterLoadError(f"lora_path must be inside the adapter directory {self.adapter_dir}")
        snapshot = tempfile.TemporaryDirectory(prefix="careloop-adapter-")
        try:
            if not _copy_inside(root, directory / ADAPTER_CONFIG, Path(snapshot.name)):
                raise AdapterLoadError(f"No LoRA adapter at {path!r} ({ADAPTER_CONFIG} missing).")
            if not any(_copy_inside(root, directory / weights, Path(snapshot.name)) for weights in ADAPTER_WEIGHTS):
                raise AdapterLoadError(f"No LoRA adapter at {path!r} (no {' or '.join(ADAPTER_WEIGHTS)}).")
        except OSError as exc:  # unreadable, or no room for the copy: a reason, not a 500
            snapshot.cleanup()
            raise AdapterLoadError(f"Reading the adapter at {path!r} failed: {exc}") from None
        except BaseException:
            snapshot.cleanup()
            raise
        return snapshot, str(directory)

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
        batch: _Batch | None = None
        while True:
            with self._lock:
                while self._running and batch is None and not (
                        self._waiting or self._pending_loads or self._draining):
                    self._wake.wait()
                if not self._running:
                    return
                # Continuous batching: waiting requests join the running batch between decode steps
                # (where the cache cannot be merged, only once the running batch is done).
                free = self.max_batch - (len(batch.rows) if batch else 0)
                if batch is not None and not batch.mergeable:
                    free = 0
                admitted = self._admitted(free)
                self.stats.queued = len(self._waiting)
                self.stats.running = len(admitted) + (len(batch.rows) if batch else 0)
            try:
                self._apply_control()
                batch = self._step(batch, admitted)
            except Exception as exc:  # noqa: BLE001 - fail these requests, keep serving the others
                failed = admitted + (batch.rows if batch else [])
                log.exception("engine_step_failed", batch=len(failed))
                for request in failed:
                    if not request.finished:
                        self._finish(request, "error", error=f"{type(exc).__name__}: {exc}")
                batch = None
            if batch is None:
                with self._lock:
                    self.stats.running = 0

    def _admitted(self, free: int) -> list[_Request]:
        """Up to ``free`` waiting requests, by priority then arrival, taken off the queue (lock held)."""
        if free <= 0 or not self._waiting:
            return []
        chosen = sorted(self._waiting, key=lambda request: (request.params.priority, request.id))[:free]
        for request in chosen:
            self._waiting.remove(request)
        return chosen

    def _apply_control(self) -> None:
        """Adapter loads and finished drains; runs on the engine thread between forward passes."""
        while True:
            with self._lock:
                if not self._pending_loads:
                    break
                load = self._pending_loads.popleft()
            try:
                self._attach_adapter(load.name, load.snapshot.name)
            except Exception as exc:  # noqa: BLE001 - a bad adapter file must not kill the engine
                load.loop.call_soon_threadsafe(_settle, load.future, AdapterLoadError(
                    f"Loading adapter {load.name!r} from {load.path!r} failed: {type(exc).__name__}: {exc}"))
                continue
            finally:
                load.snapshot.cleanup()  # the weights are in memory now
            with self._lock:
                self._adapters[load.name] = load.path
            load.loop.call_soon_threadsafe(_settle, load.future, None)
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
    def _step(self, batch: _Batch | None, admitted: list[_Request]) -> _Batch | None:
        """One decode step for the running rows plus the prefill of newly admitted ones; sample one
        token per row, stream it, and drop the rows that finished. Returns the batch that goes on."""
        logits = []
        if batch is not None:
            logits.append(self._forward(batch.next_ids[:, None], batch.attention, batch.positions[:, None],
                                        batch.cache, batch.adapter_names))
            batch.advanced()
        if admitted:
            new = self._prefill(admitted)
            logits.append(new.logits)
            if batch is not None:
                self.stats.joined_running_batch += len(admitted)
            batch = batch.merge(new) if batch is not None else new
        if batch is None:
            return None
        if len(batch.rows) > 1:
            self.stats.batched_steps += 1
        if len(set(batch.adapter_names)) > 1:
            self.stats.mixed_adapter_steps += 1
        logits = torch.cat(logits)
        keep, next_ids = [], []
        for row, request in enumerate(batch.rows):
            if request.cancelled:
                self._finish(request, "cancelled")
                continue
            token = self._sample(logits[row], request)
            if self._advance(request, token):
                keep.append(row)
                next_ids.append(token)
        return batch.select(keep, next_ids)

    def _forward(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                 cache, adapter_names: list[str]) -> torch.Tensor:  # noqa: ANN001 - a transformers Cache
        from peft import PeftModel

        # Checked every step: the first adapter load wraps the base model in a PeftModel.
        extra = {"adapter_names": adapter_names} if isinstance(self.model, PeftModel) else {}
        output = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                            position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
                            **extra)
        return output.logits[:, -1, :].float().cpu()

    def _prefill(self, requests: list[_Request]) -> _Batch:
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):  # left padding keeps every row's next token at the end
            input_ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            attention[row, width - len(request.prompt_ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        adapter_names = [r.adapter or BASE_ADAPTER for r in requests]
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, attention, positions, cache, adapter_names)
        return _Batch(list(requests), cache, attention, positions[:, -1], adapter_names, logits)

    @staticmethod
    def _sample(logits: torch.Tensor, request: _Request) -> int:
        params = request.params
        if params.repetition_penalty != 1.0:
            logits = _penalized(logits, request)
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
        text = settled_text(self.tokenizer, request.generated)
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
            text = settled_text(self.tokenizer, request.generated)
        safe = len(text)
        if not final:
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
            text = settled_text(self.tokenizer, request.generated)
        request.finished = True
        with self._lock:
            if request.adapter is not None:
                self._inflight[request.adapter] -= 1
        first = request.first_token_at - request.submitted if request.first_token_at else None
        request.emit(Finished(text, reason, len(request.prompt_ids), len(request.generated),
                              request.adapter, first, error))


def settled_text(tokenizer, tokens: list[int]) -> str:
    """The text of ``tokens`` without broken characters. Byte-level tokenizers spread one character
    over several tokens ("°" is two bytes, an emoji four), and decoding bytes that are not (yet) a
    whole character gives U+FFFD: at the end it is a character still arriving (held back until its
    last byte does, or dropped when the generation stops there, at its token limit), elsewhere a
    stray byte the model sampled, which is no character at all. Either way it is never shown as
    "�" (it was: the final piece of an answer cut at its limit mid-character). Each result is a
    prefix of the next as tokens are added, so streamed pieces add up."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return text.rstrip("\ufffd").replace("\ufffd", "")


@dataclass
class _PendingLoad:
    name: str
    path: str  # the adapter's real directory, shown in /v1/models
    snapshot: tempfile.TemporaryDirectory  # the copy of its files that the engine thread loads
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


def _copy_inside(root: Path, path: Path, into: Path) -> bool:
    """Copy the regular file ``path`` into the directory ``into``, if it is inside ``root``; False if
    there is no such file. The file is opened component by component from ``root`` along its
    resolved path without following a symlink, so what is copied is what was checked: a component
    swapped for a symlink since the resolve makes this refuse, not read elsewhere."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise AdapterLoadError(f"{path.name} of the adapter links outside the adapter directory {root}")
    parts = real.relative_to(root).parts
    if not parts:
        raise AdapterLoadError(f"{path} is not a regular file")
    no_follow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            parent, fd = fd, os.open(part, no_follow | os.O_DIRECTORY, dir_fd=fd)
            os.close(parent)
        # O_NONBLOCK: a FIFO put there must not hang the load (fstat refuses it below).
        parent, fd = fd, os.open(parts[-1], no_follow | os.O_NONBLOCK, dir_fd=fd)
        os.close(parent)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (ENOTDIR too: a directory now a link)
        os.close(fd)
        return False
    except OSError as exc:  # ELOOP: a symlink where the resolve saw none
        os.close(fd)
        raise AdapterLoadError(f"{path} could not be opened without following a link ({exc.strerror}); "
                               "was it replaced while loading?") from None
    with open(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise AdapterLoadError(f"{path} is not a regular file")
        with open(into / path.name, "wb") as target:
            shutil.copyfileobj(source, target)
    return True


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _penalized(logits: torch.Tensor, request: _Request) -> torch.Tensor:
    """transformers' ``RepetitionPenaltyLogitsProcessor`` for one row: the logit of every token already in
    the prompt or the answer divided by the penalty when positive, multiplied when negative (so the
    evaluation's ``generate`` and serving decode alike)."""
    if request.penalized is None:
        request.penalized = set(request.prompt_ids)
    request.penalized.update(request.generated[-1:])
    ids = torch.tensor(sorted(request.penalized), dtype=torch.long)
    chosen = logits.gather(0, ids)
    penalty = request.params.repetition_penalty
    return logits.scatter(0, ids, torch.where(chosen > 0, chosen / penalty, chosen * penalty))
