"""Training rows in TRL's conversational formats, for any chat template, and every conversion to them.

Training and evaluation data keeps one shape from the feedback export to the trainers: TRL's
conversational rows (``{"messages": [...]}`` conversations; ``{"prompt": [user], "chosen":
[assistant], "rejected": [assistant]}`` preference pairs). This module is where rows are made from
plain text (seed records, evaluation files) and where text is read back out of them (the question a
pair asks, the answers it compares), as TRL keeps its conversions in ``data_utils.py``.

SFT trains on TRL's conversational prompt/completion format: one row per assistant turn, the
conversation before it as the prompt and the turn as the completion. TRL then computes the loss on
the completion's tokens only (``completion_only_loss``), found as the tokens where the rendered
prompt and the rendered prompt + completion part. That needs no ``{% generation %}`` markers, so
it works for every chat template (TRL's ``assistant_only_loss`` works only for templates that have
them or that TRL knows how to patch; SmolLM2's is neither). DPO uses the same prompt/chosen/rejected
conversational rows.

Some templates (Gemma's, Mistral's older ones) refuse a system message: for those the system text
is folded into the first user message, as their model cards advise.

Grounded rows (``grounded_row``, ``fit_grounded``) carry library passages in their question, as the
chat's prompt does (``library.grounding``), cut so the whole row fits its trainer's ``max_length``:
the passages are shortened, never the question or the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from library.grounding import grounded_messages
from library.index import Passage

# Rows that came from clinicians (feedback.export's origins, and the SFT rows made of them), not seed data
CLINICIAN_ORIGINS = {"comparison", "comparison_correction", "correction", "rating", "feedback"}
MIN_PASSAGE_CHARS = 60  # shorter than this a passage says nothing: the row is trained on without passages


def sft_rows(conversations: list[dict]) -> list[dict]:
    """``{"messages": [...]}`` conversations -> ``{"prompt": [...], "completion": [...]}`` rows."""
    rows = []
    for conversation in conversations:
        messages = conversation["messages"]
        for index, message in enumerate(messages):
            if message["role"] == "assistant" and index > 0:
                rows.append({"prompt": [dict(m) for m in messages[:index]], "completion": [dict(message)]})
    return rows


def preference_row(prompt: str, chosen: str, rejected: str, **meta: object) -> dict:
    """A preference pair's texts -> TRL's conversational preference row (``meta``, e.g. ``origin``, kept)."""
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], **meta}


def prompt_text(row: dict) -> str:
    """The question a conversational row asks: its prompt's (or conversation's) first user message."""
    return next(m["content"] for m in row.get("prompt") or row["messages"] if m["role"] == "user")


def answer_text(messages: list[dict]) -> str:
    """The text of a completion (``chosen``, ``rejected``): its last message."""
    return messages[-1]["content"]


def grounded_row(row: dict, passages: list[Passage], passage_chars: int) -> dict:
    """``row`` (a conversation or a preference pair) with its first user message carrying ``passages``,
    each cut to ``passage_chars``: the chat's grounded prompt."""
    key = "prompt" if "prompt" in row else "messages"
    messages = row[key]
    first = next(index for index, message in enumerate(messages) if message["role"] == "user")
    question = grounded_messages([messages[first]], passages, passage_chars)
    return {**row, key: [*messages[:first], *question, *messages[first + 1:]]}


def row_tokens(row: dict, tokenizer) -> int:
    """Tokens of the longest sequence ``row`` trains on, as TRL renders it with the chat template: a
    conversation whole; a preference pair's prompt with the longer of its two answers."""
    if "messages" in row:
        sequences = [row["messages"]]
    else:
        sequences = [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    if not accepts_system_message(tokenizer):
        sequences = [fold_system(sequence) for sequence in sequences]
    return max(len(tokenizer.apply_chat_template(sequence, tokenize=True, return_dict=True)["input_ids"])
               for sequence in sequences)


def fit_grounded(row: dict, passages: list[Passage], passage_chars: int, tokenizer, max_length: int) -> dict:
    """``grounded_row`` within ``max_length`` tokens. TRL cuts a longer row from its end, the answer
    first; here the passages are shortened instead (by a third at a time), and the row stays bare
    when even ``MIN_PASSAGE_CHARS`` of each do not fit: the question and the answer are kept whole."""
    chars = passage_chars
    while chars >= MIN_PASSAGE_CHARS:
        grounded = grounded_row(row, passages, chars)
        if row_tokens(grounded, tokenizer) <= max_length:
            return grounded
        chars = chars * 2 // 3
    return row


def dpo_rows(pairs: list[dict]) -> list[dict]:
    """Preference rows as DPOTrainer takes them: prompt, chosen and rejected only (metadata dropped)."""
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def reference_conversations(references: list[dict]) -> list[dict]:
    """``{"question", "reference"}`` items -> ``{"messages": [...]}`` conversations (SFT's held-out loss)."""
    return [{"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["reference"]}]}
            for r in references]


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file (an export split, a general chat set), blank lines skipped."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def accepts_system_message(tokenizer) -> bool:  # noqa: ANN001 - a transformers tokenizer
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                      tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja's raise_exception surfaces as a TemplateError
        return False
    return True


def fold_system(messages: list[dict]) -> list[dict]:
    """The system message(s) put in front of the first user message."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


def fit_to_template(rows: list[dict], tokenizer) -> list[dict]:  # noqa: ANN001
    """Rows the tokenizer's chat template can render: system messages folded where it refuses them."""
    if accepts_system_message(tokenizer):
        return rows
    return [{**row, "prompt": fold_system(row["prompt"])} for row in rows]
