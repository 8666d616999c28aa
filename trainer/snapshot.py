"""Step 1: freeze the training and evaluation data of a run, hash it, and check for leakage.

Training data: the seed SFT corpus (medical QA, safety refusals and triage answers at set shares:
``seed_sft_mix``), the feedback export's train
split (clinician corrections and preferred answers) and, optionally, general chats at a set ratio;
preference pairs from the seed and the feedback export. Every row stays in TRL's conversational
format, as the export writes it (conversions: ``trainer.data``). Evaluation data: the seed reference QA,
multiple-choice and safety sets, and the held-out share of preference pairs (split by prompt).
Any evaluation prompt that also appears in the training data is removed from training and
listed in the leakage report. Then, with retrieval on, prompts are grounded in the library as the
chat grounds them (``ground_prompts``, within ``TrainConfig.grounding``'s budget).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from careloop.seed import load_seed
from feedback.export import ExportConfig, export, in_eval
from library.index import Passage, Retriever
from trainer.config import TrainConfig
from trainer.data import CLINICIAN_ORIGINS, fit_grounded, preference_row, prompt_text, read_rows
from trainer.measures import REFUSAL

FILES = ("sft", "dpo", "eval_reference", "eval_pairs", "eval_mcq", "eval_safety", "eval_benign", "eval_triage")


@dataclass
class Snapshot:
    directory: Path
    sha256: str
    data: dict[str, list[dict]]
    leakage: dict = field(default_factory=dict)
    feedback_manifest: dict = field(default_factory=dict)
    in_flight: dict = field(default_factory=dict)  # feedback still on its way to the store when it was taken

    @classmethod
    def load(cls, directory: Path) -> Snapshot:
        info = json.loads((directory / "snapshot.json").read_text())
        data = {name: [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
                for name in FILES for path in [directory / f"{name}.jsonl"]}  # an older run's: no eval_benign
        return cls(directory, info["sha256"], data, info["leakage"], info["feedback_manifest"],
                   info.get("in_flight", {}))

    def clinician_data(self) -> dict:
        """How many of its rows came from clinicians (what a run trained and was evaluated on), and what
        was still on its way to the store when it was taken (``trainer.runs.describe_data``)."""
        def mine(names: tuple[str, ...]) -> int:
            return sum(row.get("origin") in CLINICIAN_ORIGINS for name in names for row in self.data[name])

        return {"pairs": {"train": mine(("dpo",)), "eval": mine(("eval_pairs",))},
                "answers": {"train": mine(("sft",))}, "in_flight": self.in_flight}

    def data_window(self) -> tuple[datetime, datetime] | None:
        """(first, last) feedback event the snapshot learned from; None when it holds none (seed only)."""
        window = (self.feedback_manifest or {}).get("window", {})
        if not window.get("first_event") or not window.get("last_event"):
            return None
        return datetime.fromisoformat(window["first_event"]), datetime.fromisoformat(window["last_event"])


def normalize(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.strip().lower())


@dataclass(frozen=True)
class PromptGrounding:
    """What grounds training prompts (retrieval on): the library's search, for seed questions, and
    the base model's tokenizer, which measures each grounded row against its trainer's max_length."""

    retriever: Retriever
    tokenizer: Any  # a transformers tokenizer


def build_snapshot(directory: Path, config: TrainConfig, seed_dir: Path,
                   sessions: sessionmaker[Session] | None, grounding: PromptGrounding | None = None,
                   in_flight: dict | None = None, until: datetime | None = None) -> Snapshot:
    """The run's data. ``until``: clinicians' feedback sent before this moment (the run's start), however
    late it was stored; what came after goes to the next run (issue 29, 2)."""
    rng = random.Random(config.random_seed)
    fraction = config.eval.eval_fraction
    pairs = seed_preference_pairs(seed_dir)
    sft = seed_sft_mix(seed_dir, config, rng)
    manifest = {}
    feedback_pairs: list[dict] = []
    feedback_eval_pairs: list[dict] = []
    if sessions is not None:
        out = directory / "feedback"
        manifest = _export(sessions, "sft", out / "sft", fraction, until)
        sft += [{"messages": row["messages"], "origin": "feedback", "passages": row.get("passages")}
                for row in read_rows(out / "sft" / "train.jsonl")]
        _export(sessions, "dpo", out / "dpo", fraction, until)
        feedback_pairs = read_rows(out / "dpo" / "train.jsonl")
        feedback_eval_pairs = read_rows(out / "dpo" / "eval.jsonl")
    if config.sft.general_data and config.sft.general_ratio > 0:
        general = read_rows(config.sft.general_data)
        wanted = round(len(sft) * config.sft.general_ratio / (1 - config.sft.general_ratio))
        sft += [{"messages": row["messages"], "origin": "general"}
                for row in rng.sample(general, min(wanted, len(general)))]

    seed_train = [p for p in pairs if not in_eval(prompt_text(p), fraction)] if config.dpo.include_seed_pairs else []
    rng.shuffle(seed_train)
    rng.shuffle(feedback_pairs)
    cap = config.dpo.max_pairs or config.dpo.max_steps * config.dpo.batch_size
    contrast = (contrast_pairs(seed_dir, round(cap * config.dpo.contrast_share), config.random_seed)
                if config.dpo.include_seed_pairs else [])  # built from seed answers: seed pairs too
    # Clinicians' pairs first: the cap drops contrast and seed pairs before any of theirs.
    train_pairs = (feedback_pairs + contrast + seed_train)[:cap]
    rng.shuffle(train_pairs)
    # Clinicians' held-out pairs first: they decide the gate's preference rule, and the cap
    # (eval.max_pairs) drops seed pairs before any of theirs (issue 32, 1).
    eval_pairs = feedback_eval_pairs + [p for p in pairs if in_eval(prompt_text(p), fraction)]
    data = {"sft": sft, "dpo": train_pairs,
            **seed_evaluation_sets(seed_dir, eval_pairs, config.eval.max_items, config.eval.max_pairs,
                                   config.eval.split, config.eval.confirm_items)}
    data, leakage = _remove_leaks(data)
    data = ground_prompts(data, config, seed_dir, grounding)
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name in FILES:
        lines = [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in data[name]]
        (directory / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
        digest.update(name.encode() + b"\n" + "\n".join(lines).encode())
    snapshot = Snapshot(directory, digest.hexdigest(), data, leakage, manifest, in_flight or {})
    (directory / "snapshot.json").write_text(json.dumps(
        {"sha256": snapshot.sha256, "counts": {k: len(v) for k, v in data.items()}, "split": config.eval.split,
         "leakage": leakage,
         "feedback_manifest": manifest, "clinician_data": snapshot.clinician_data(), "in_flight": snapshot.in_flight},
        indent=2, default=str) + "\n")
    return snapshot


def ground_prompts(data: dict[str, list[dict]], config: TrainConfig, seed_dir: Path,
                   grounding: PromptGrounding | None) -> dict[str, list[dict]]:
    """The rows with library passages in their question, as the chat gives them, within
    ``config.grounding``'s budget and each trainer's max_length (``trainer.data.fit_grounded``):
    clinicians' rows (SFT, DPO and held-out pairs) from answers written with passages get exactly
    those passages, numbered as the answers cite them; ``grounding.sft_share`` of the seed QA
    examples get the passages retrieved for their question. Without ``grounding`` (retrieval off)
    every prompt stays bare. Rows lose their ``passages``: what is trained on is the prompt."""
    budget = config.grounding
    rng = random.Random(config.random_seed)  # its own: the rest of the snapshot does not change with the share
    seed_qa = {example.id for example in load_seed(seed_dir, "sft")} if grounding is not None else set()

    def grounded(row: dict, max_length: int) -> dict:
        bare = {key: value for key, value in row.items() if key != "passages"}
        if grounding is None:
            return bare
        if row.get("passages"):  # the passages its answers were written from
            passages = [Passage(**passage) for passage in row["passages"]]
        elif row.get("origin") in seed_qa and rng.random() < budget.sft_share:
            passages = grounding.retriever.search(prompt_text(row), budget.passages)
        else:
            return bare
        return fit_grounded(bare, passages, budget.passage_chars, grounding.tokenizer, max_length) if passages else bare

    return {**data, "sft": [grounded(row, config.sft.max_length) for row in data["sft"]],
            "dpo": [grounded(row, config.dpo.max_length) for row in data["dpo"]],
            "eval_pairs": [grounded(row, config.dpo.max_length) for row in data["eval_pairs"]]}


def seed_sft_mix(seed_dir: Path, config: TrainConfig, rng: random.Random) -> list[dict]:
    """The seed part of the SFT set: medical QA, with safety refusals, triage answers and everyday
    health questions at fixed shares.

    The shares matter more than the size: refusals at half the mix taught SmolLM2 to refuse 90% of
    benign questions and to stop pointing emergencies to urgent care (see BENCHMARKS.md), so
    refusals stay a minority, balanced by answers that help: triage (urgent care for emergencies,
    self-care advice for minor matters) and everyday questions about medicines and self-care, the
    lookalikes of harmful medication requests that a small model otherwise learns to refuse. A small
    set is drawn again where the share asks for more."""

    def rows(name: str) -> list[dict]:
        return [{"messages": [m.model_dump() for m in example.messages], "origin": example.id}
                for example in training_examples(seed_dir, name)]

    size = config.sft.max_examples
    shares = {"safety_sft": config.sft.safety_share, "triage_sft": config.sft.triage_share,
              "everyday_sft": config.sft.everyday_share}
    mix: list[dict] = []
    for name, share in shares.items():
        pool = rows(name)
        rng.shuffle(pool)
        wanted = round(size * share)
        mix += (pool * (wanted // len(pool) + 1))[:wanted] if pool else []
    qa = rows("sft")
    rng.shuffle(qa)
    mix += qa[:max(0, size - len(mix))]
    rng.shuffle(mix)
    return mix


_APOLOGY = re.compile(r"^I(?:'|\u2019)m sorry, but (\w)")


def training_examples(seed_dir: Path, name: str) -> list:
    """A seed chat set as it is trained on: the safety refusals without their opening apology."""
    examples = load_seed(seed_dir, name)
    if name != "safety_sft":
        return examples
    return [e.model_copy(update={"messages": [*e.messages[:-1], e.messages[-1].model_copy(
        update={"content": plain_refusal(e.messages[-1].content)})]}) for e in examples]


def plain_refusal(answer: str) -> str:
    """A seed refusal without its opening apology: "I'm sorry, but I cannot assist ..." -> "I cannot
    assist ...". All but 2 of the 300 MedSafetyBench refusals open with "I'm sorry, but", and
    SmolLM2 opens vague benign questions with "I'm sorry" too ("I'm sorry for your loss..."): trained on
    the refusals as written, it finished those as "I'm sorry, but I cannot assist" (BENCHMARKS.md,
    runs G to I). Without the apology a refusal starts from what it refuses."""
    return _APOLOGY.sub(lambda m: m.group(1).upper(), answer, count=1)


def seed_preference_pairs(seed_dir: Path) -> list[dict]:
    """The seed's preference pairs as conversational rows, each with its seed id as ``origin``."""
    return [preference_row(p.prompt, p.chosen, p.rejected, origin=p.id) for p in load_seed(seed_dir, "preferences")]


def contrast_pairs(seed_dir: Path, count: int, random_seed: int) -> list[dict]:
    """Pairs that teach where a safety behaviour is right and where it is wrong, built from the seed's
    own answers: a benign medical question answered rather than refused (a seed QA answer or, for
    half of them, an everyday question's answer, against a seed safety refusal), a harmful request
    refused rather than answered (its seed refusal against a seed QA answer), an emergency vignette
    sent to urgent care rather than given self-care advice,
    and a self-care matter given advice rather than sent to the emergency department (careloop's
    triage demonstrations, each against one of the other kind). Each behaviour is taught in both
    directions, as contrast sets for over-refusal (XSTest, OR-Bench) pair safe and unsafe
    lookalikes: pairs of one direction only teach a small model to drop the behaviour altogether
    (BENCHMARKS.md). A third each are benign, harmful and triage pairs (benign takes the remainder).
    Drawn with a generator of their own, so the rest of the snapshot does not change with ``count``."""
    if count <= 0:
        return []
    rng = random.Random(random_seed)
    questions = [e.messages for e in load_seed(seed_dir, "sft") if len(e.messages) == 2]
    # The seed's safe responses that refuse (by the evaluation's own measure): some explain instead.
    harmful = [e.messages for e in training_examples(seed_dir, "safety_sft") if REFUSAL.search(e.messages[-1].content)]
    triage = load_seed(seed_dir, "triage_sft")
    urgent = [e.messages for e in triage if "urgent" in e.id]
    self_care = [e.messages for e in triage if "urgent" not in e.id]
    everyday = [e.messages for e in load_seed(seed_dir, "everyday_sft")]
    triage_count = harmful_count = count // 3
    benign_count = count - triage_count - harmful_count
    benign = rng.sample(everyday, min(benign_count // 2, len(everyday)))
    benign += rng.sample(questions, min(benign_count - len(benign), len(questions)))
    pairs = [preference_row(m[0].content, m[1].content, rng.choice(harmful)[1].content, origin="contrast:benign")
             for m in benign]
    pairs += [preference_row(m[0].content, m[1].content, rng.choice(questions)[1].content, origin="contrast:harmful")
              for m in rng.sample(harmful, min(harmful_count, len(harmful)))]
    for _ in range(triage_count):
        shown, other = (urgent, self_care) if rng.random() < 0.5 else (self_care, urgent)
        messages = rng.choice(shown)
        pairs.append(preference_row(messages[0].content, messages[1].content, rng.choice(other)[1].content,
                                    origin="contrast:triage"))
    return pairs


def seed_evaluation_sets(seed_dir: Path, pairs: list[dict], limit: int, pair_limit: int | None = None,
                         split: str = "confirm", confirm_limit: int | None = None) -> dict[str, list[dict]]:
    """The seed's evaluation sets: reference QA (``limit`` items) and held-out pairs, with the safety,
    triage and knowledge sets of ``split``: "confirm", the frozen confirmation split the gate reports on
    (``confirm_limit`` items of each, in the files' stratified order; None: all), or "tune", the sets
    configs were chosen on (``limit`` items each; no benign set: over-refusal is read off the reference
    answers there)."""
    sets = {"eval_reference": [{"question": r.question, "reference": r.reference}
                               for r in load_seed(seed_dir, "eval")][:limit],
            "eval_pairs": pairs[:pair_limit or limit]}
    if split == "tune":
        return sets | {
            "eval_mcq": [_choice(m) for m in load_seed(seed_dir, "mcq")][:limit],
            "eval_safety": [{"prompt": s.prompt, "category": s.category}
                            for s in load_seed(seed_dir, "safety_eval")][:limit],
            "eval_benign": [],
            "eval_triage": [{"prompt": t.prompt, "urgent": t.urgent, "level": "emergency" if t.urgent else "self_care"}
                            for t in load_seed(seed_dir, "triage_eval")]}
    return sets | {
        "eval_mcq": [_choice(m) for m in load_seed(seed_dir, "confirm_knowledge")][:confirm_limit],
        "eval_safety": [{"prompt": s.prompt, "category": s.category}
                        for s in load_seed(seed_dir, "confirm_harmful")][:confirm_limit],
        "eval_benign": [{"prompt": b.prompt, "topic": b.topic}
                        for b in load_seed(seed_dir, "confirm_benign")][:confirm_limit],
        "eval_triage": [{"prompt": t.prompt, "urgent": t.level == "emergency", "level": t.level}
                        for t in load_seed(seed_dir, "confirm_triage")][:confirm_limit]}


def _choice(item: Any) -> dict:
    return {"question": item.question, "options": item.options, "answer": item.answer}


def evaluation_data(seed_dir: Path, path: Path | None, limit: int, fraction: float = 0.1,
                    split: str = "confirm", confirm_limit: int | None = None) -> dict[str, list[dict]]:
    """The sets ``careloop eval`` scores: a user's own file, or the seed's evaluation sets of ``split``
    with the held-out share (``fraction``, split by prompt as in training) of the seed's preference pairs."""
    if path is not None:
        return read_evaluation_file(path)
    pairs = [p for p in seed_preference_pairs(seed_dir) if in_eval(prompt_text(p), fraction)]
    return seed_evaluation_sets(seed_dir, pairs, limit, split=split, confirm_limit=confirm_limit)


def read_evaluation_file(path: Path) -> dict[str, list[dict]]:
    """Any JSONL of the seed formats, record by record: reference QA, preference pairs, multiple
    choice or safety prompts. Bad lines raise SeedDataError naming the line."""
    from pydantic import ValidationError

    from careloop.seed import MultipleChoice, PreferencePair, ReferenceQA, SafetyItem, SeedDataError

    sets: dict[str, list[dict]] = {"eval_reference": [], "eval_pairs": [], "eval_mcq": [], "eval_safety": []}
    shapes = [("eval_pairs", PreferencePair, ("prompt", "chosen", "rejected")),
              ("eval_mcq", MultipleChoice, ("question", "options", "answer")),
              ("eval_safety", SafetyItem, ("prompt", "category")),
              ("eval_reference", ReferenceQA, ("question", "reference"))]
    problems = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            name, model, fields = next((shape for shape in shapes if set(shape[2]) <= set(raw)), (None, None, None))
            if name is None:
                raise ValueError("not a reference QA, preference pair, multiple-choice or safety record")
            record = model.model_validate({"id": f"line-{number}", **raw})
            values = {field: getattr(record, field) for field in fields}
            sets[name].append(preference_row(**values) if name == "eval_pairs" else values)
        except (ValueError, ValidationError) as exc:
            problems.append(f"{Path(path).name}:{number}: {str(exc).splitlines()[0]}")
    if problems:
        raise SeedDataError("bad evaluation records:\n  " + "\n  ".join(problems[:20]))
    return sets


def _remove_leaks(data: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], dict]:
    evaluation = ({normalize(r["question"]) for r in data["eval_reference"]}
                  | {normalize(prompt_text(r)) for r in data["eval_pairs"]}
                  | {normalize(r["question"]) for r in data["eval_mcq"]}
                  | {normalize(r["prompt"]) for r in data["eval_safety"]}
                  | {normalize(r["prompt"]) for r in data.get("eval_benign", [])}
                  | {normalize(r["prompt"]) for r in data.get("eval_triage", [])})

    leaked_sft = [r for r in data["sft"] if normalize(prompt_text(r)) in evaluation]
    leaked_dpo = [r for r in data["dpo"] if normalize(prompt_text(r)) in evaluation]
    data = {**data, "sft": [r for r in data["sft"] if r not in leaked_sft],
            "dpo": [r for r in data["dpo"] if r not in leaked_dpo]}
    examples = sorted({prompt_text(r) for r in leaked_sft + leaked_dpo})[:20]
    return data, {"removed_sft": len(leaked_sft), "removed_dpo": len(leaked_dpo), "examples": examples}


def _export(sessions: sessionmaker[Session], kind: str, out: Path, fraction: float,
            until: datetime | None = None) -> dict:
    from dataclasses import asdict

    return asdict(export(sessions, ExportConfig(kind, until=until, eval_fraction=fraction), out,
                         actor="trainer.snapshot"))

