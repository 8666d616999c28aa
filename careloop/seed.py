"""The openly licensed seed corpus in ``data/seed`` (see its ATTRIBUTION.md), validated record by record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

T = TypeVar("T", bound=BaseModel)


class SeedDataError(Exception):
    """A seed file has bad records; the message lists them as ``file:line: reason``."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str = Field(min_length=1)
    source: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ChatExample(_Record):
    """One SFT conversation; it must end with the assistant turn we train on."""

    messages: list[ChatMessage] = Field(min_length=2)

    @field_validator("messages")
    @classmethod
    def _ends_with_answer(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "assistant":
            raise ValueError("last message must be the assistant's answer")
        if not any(m.role == "user" for m in messages):
            raise ValueError("needs at least one user message")
        return messages


class ReferenceQA(_Record):
    question: str = Field(min_length=1)
    reference: str = Field(min_length=1)


class PreferencePair(_Record):
    prompt: str = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)


class MultipleChoice(_Record):
    question: str = Field(min_length=1)
    options: dict[str, str] = Field(min_length=2)
    answer: str

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> MultipleChoice:
        if self.answer not in self.options:
            raise ValueError(f"answer {self.answer!r} is not one of the options {sorted(self.options)}")
        return self


class SafetyItem(_Record):
    prompt: str = Field(min_length=1)
    reference_safe_response: str = Field(min_length=1)
    category: int = Field(ge=1, le=9)


class TriageItem(_Record):
    """A patient's message and whether it describes an emergency (urgent) or a self-care matter."""

    prompt: str = Field(min_length=1)
    urgent: bool


class BenignQuestion(_Record):
    """A patient-style question a safe assistant must answer, not refuse (over-caution is measured on them)."""

    prompt: str = Field(min_length=1)
    topic: Literal["medicines", "self_care", "everyday"]


class TriageVignette(_Record):
    """A patient's message at one of three urgency levels, with the public guidance the level follows."""

    prompt: str = Field(min_length=1)
    level: Literal["emergency", "soon", "self_care"]
    basis: str = Field(min_length=1)


# name -> (file, record type); the names are what the CLI and the trainer use. The confirm_* sets are the
# frozen confirmation split the gate reports on (data/seed/confirm/README.md): no config is chosen on them.
SEED_FILES: dict[str, tuple[str, type[BaseModel]]] = {
    "sft": ("medqa_sft.jsonl", ChatExample),
    "safety_sft": ("safety_sft.jsonl", ChatExample),
    "eval": ("medqa_eval.jsonl", ReferenceQA),
    "preferences": ("preferences_seed.jsonl", PreferencePair),
    "mcq": ("mcq_eval.jsonl", MultipleChoice),
    "safety_eval": ("safety_eval.jsonl", SafetyItem),
    "triage_sft": ("triage_sft.jsonl", ChatExample),
    "triage_eval": ("triage_eval.jsonl", TriageItem),
    "everyday_sft": ("everyday_sft.jsonl", ChatExample),
    "confirm_harmful": ("confirm/harmful.jsonl", SafetyItem),
    "confirm_benign": ("confirm/benign.jsonl", BenignQuestion),
    "confirm_triage": ("confirm/triage.jsonl", TriageVignette),
    "confirm_knowledge": ("confirm/knowledge.jsonl", MultipleChoice),
}
CONFIRMATION_SETS = ("confirm_harmful", "confirm_benign", "confirm_triage", "confirm_knowledge")

_MAX_REPORTED = 20


def load_jsonl(path: Path, record_type: type[T]) -> list[T]:
    """Parse and validate every line; raise :class:`SeedDataError` naming each bad line by number."""
    if not path.is_file():
        raise SeedDataError(f"{path}: file not found")
    records: list[T] = []
    problems: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                records.append(record_type.model_validate(json.loads(raw.decode("utf-8"))))
            except UnicodeDecodeError as exc:
                problems.append(f"{path.name}:{number}: not UTF-8 ({exc.reason})")
            except json.JSONDecodeError as exc:
                problems.append(f"{path.name}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            except ValidationError as exc:
                reasons = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
                )
                problems.append(f"{path.name}:{number}: {reasons}")
    if problems:
        shown = problems[:_MAX_REPORTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise SeedDataError(f"{len(problems)} bad record(s) in {path}:\n  " + "\n  ".join(shown) + more)
    return records


def load_seed(seed_dir: Path, name: str) -> list[BaseModel]:
    try:
        filename, record_type = SEED_FILES[name]
    except KeyError:
        raise SeedDataError(f"unknown seed set {name!r}; known: {', '.join(SEED_FILES)}") from None
    return load_jsonl(seed_dir / filename, record_type)


def validate_all(seed_dir: Path) -> dict[str, int]:
    """Record counts per seed set; raises on the first set with bad records."""
    return {name: len(load_seed(seed_dir, name)) for name in SEED_FILES}
