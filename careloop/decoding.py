"""How answers are decoded: one setting for the chat, the review answers and the evaluation.

What the promotion gate scores must be what students read (issue 30): the chat, the review fill and
the evaluation all decode with ``decoding_for(settings)``, at the same length. Serving applies the same
decoding to a request that sets none (as vLLM applies a model's ``generation_config.json``), and
careloop's own clients send it explicitly, so an engine that does not know careloop's default (vLLM,
TGI) still decodes alike.

Where the values come from, first match wins, field by field: ``CARELOOP_DECODING_*`` settings; the
base model's ``generation_config.json`` where it sets sampling; careloop's default, chosen on the
offline default model (SmolLM2-135M-Instruct, whose generation config sets nothing) with
``bench/decoding.py`` on tuning questions and confirmed on held-out patient questions (BENCHMARKS.md,
"Decoding"). ``repetition_penalty`` has transformers' meaning (logits of tokens already in the prompt
or the answer divided by it), which vLLM, TGI and careloop's engine share.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from careloop.log import get_logger
from careloop.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Decoding:
    temperature: float  # 0: greedy
    top_p: float
    repetition_penalty: float  # 1.0: none
    max_tokens: int
    # The precision serving computes in (CARELOOP_SERVING_DTYPE): the evaluation generates its answers in
    # it too, so the gate scores what students are served (it used bf16 autocast beside fp32 serving).
    precision: str = "float32"

    def request_params(self, seed: int | None = None) -> dict[str, Any]:
        """Keyword arguments for an OpenAI chat completion (huggingface_hub's ``chat_completion``);
        ``repetition_penalty`` travels as the extension vLLM and careloop's serving accept."""
        params: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p,
                                  "max_tokens": self.max_tokens}
        if self.repetition_penalty != 1.0:
            params["extra_body"] = {"repetition_penalty": self.repetition_penalty}
        if seed is not None:
            params["seed"] = seed
        return params

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (the evaluation)."""
        sampled = self.temperature > 0
        return {"max_new_tokens": self.max_tokens, "do_sample": sampled,
                "repetition_penalty": self.repetition_penalty,
                **({"temperature": self.temperature, "top_p": self.top_p} if sampled else {})}

    def describe(self) -> str:
        how = (f"temperature {self.temperature:g}, top-p {self.top_p:g}" if self.temperature > 0 else "greedy")
        if self.repetition_penalty != 1.0:
            how += f", repetition penalty {self.repetition_penalty:g}"
        if self.precision != "float32":
            return f"{how}, up to {self.max_tokens} tokens, in {self.precision}"
        return f"{how}, up to {self.max_tokens} tokens"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# careloop's default where neither the settings nor the model's generation config say (BENCHMARKS.md,
# "Decoding"): at temperature 1.0 SmolLM2-135M writes word salad, greedy loops on a sentence.
DEFAULT = Decoding(temperature=0.3, top_p=0.9, repetition_penalty=1.1, max_tokens=256)

_GENERATION_KEYS = ("temperature", "top_p", "repetition_penalty")


def from_generation_config(config: dict[str, Any]) -> dict[str, float]:
    """What a model's ``generation_config.json`` sets about sampling (nothing, for most chat models'
    own files besides the token ids), with transformers' meaning: ``do_sample: false`` is greedy, and
    ``do_sample: true`` samples at temperature 1.0 and top-p 1.0 where the file sets no other."""
    found = {key: float(config[key]) for key in _GENERATION_KEYS if isinstance(config.get(key), int | float)}
    if config.get("do_sample") is False:
        found["temperature"] = 0.0
    elif config.get("do_sample") is True:
        found = {"temperature": 1.0, "top_p": 1.0} | found
    return found


def resolve(settings: Settings, generation_config: dict[str, Any] | None) -> Decoding:
    """The decoding for these settings and this base model's generation config (None: not known)."""
    model_says = from_generation_config(generation_config or {})
    chosen = {key: value for key, value in (("temperature", settings.decoding_temperature),
                                             ("top_p", settings.decoding_top_p),
                                             ("repetition_penalty", settings.decoding_repetition_penalty))
              if value is not None}
    return replace(DEFAULT, **{**model_says, **chosen}, max_tokens=settings.answer_max_tokens,
                   precision=settings.serving_dtype)


def generation_config_of(name_or_path: str) -> dict[str, Any] | None:
    """The base model's ``generation_config.json``: from its directory, or from the local hub cache for a
    hub id (never a download: a process that has not loaded the model yet must not wait on the hub)."""
    local = Path(name_or_path).expanduser()
    path: str | Path | None = local / "generation_config.json" if local.is_dir() else None
    if path is None:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "generation_config.json")
        path = cached if isinstance(cached, str) else None
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        log.warning("generation_config_unreadable", path=str(path), error=type(exc).__name__)
        return None


def decoding_for(settings: Settings) -> Decoding:
    """The decoding every answer uses with these settings (chat, review answers, evaluation)."""
    from careloop.base_model import base_model_path

    return resolve(settings, generation_config_of(base_model_path(settings)))
