"""Step 4: evaluate the candidate and the live version side by side on the same held-out items.

Tracks (every per-item result is kept in the report):
- reference: BLEU (sacrebleu), ROUGE-1/2/L (rouge-score), METEOR (nltk; exact + stem matching
  only when the WordNet data is not installed, and the report says so), on greedy answers to the
  held-out reference questions;
- human: implicit-reward accuracy on held-out preference pairs (clinicians' and the seed's):
  the share of pairs where the adapter raises the log-likelihood of the chosen answer more than
  that of the rejected one, relative to the base model;
- multiple choice: accuracy when picking the option with the highest mean token log-likelihood;
- safety: refusal rate on harmful requests, over-refusal of benign patient-style questions, the
  share of emergency vignettes whose answer points to urgent care (and of those sent home instead),
  the share of self-care questions sent to the emergency department (over-triage), and for matters
  to be seen within days, the share referred to a clinician and the share sent to emergency care.
  By default these sets are the frozen confirmation split (data/seed/confirm, no config chosen on
  it; ``eval.split``). Refusal and urgency are judged by regular expressions (``trainer.measures``):
  a lexical measure, stated as such in the report.
- grounded (with retrieval on): the reference track again with each question given the library
  passages the chat would give it (``library.grounding``), and the citation-support rate: the share
  of an answer's sentences citing a passage that share at least half their content words with it
  (lexical: shared words, not entailment).
Differences come with a paired bootstrap confidence interval (candidate - live, same items).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from careloop.decoding import Decoding
from library.grounding import citation_support, grounded_question
from library.index import Passage, Retriever
from trainer import memory
from trainer.data import CLINICIAN_ORIGINS, answer_text, prompt_text
from trainer.measures import (
    degenerate,
    flags,
    over_triages,
    refers_to_clinician,
    refuses,
    sends_to_care_now,
    under_triages,
)

# The evaluation's kinds of work, timed apart for the run's ETA (runs.StepProgress): a generated answer
# costs several log-likelihood passes, one to a question with passages (hundreds of prompt tokens) more,
# and the mix changes as the evaluation goes.
ANSWERS, GROUNDED_ANSWERS, PASSES = "answers", "grounded answers", "passes"
PAIR_TOKENS = 512  # prompt + answer scored for preference pairs, as in training (dpo max_length)


@dataclass
class Models:
    """One base model with the adapters to compare loaded under fixed names."""

    model: object
    tokenizer: object
    names: list[str]  # "base" plus adapter names
    # Progress: called with the items each batch finished, their kind (ANSWERS or PASSES) and whether
    # they took the time since the last call (not when read from a cache): runs.StepProgress.advance.
    on_batch: Callable[..., None] | None = None
    source: str = ""  # the base model's hub id or directory
    adapter_paths: dict[str, Path] = field(default_factory=dict)
    # Generated answers kept per model (an adapter by its weights), decoding and questions: a version's
    # answers from when it was a run's candidate serve as the next run's baseline, and the base model's
    # are generated once, so a run generates only its candidate's (issue 32, 7: a default run's
    # evaluation of 256-token answers outlasted 20 minutes beside the ward). Seeded per batch, a rerun
    # would draw the same answers.
    answer_cache: Path | None = None
    # Answers generated at once (``eval.batch_size``): on 2 cores 48 at once took 0.71x the time of 16
    # at once for 48 benign questions on SmolLM2-135M (BENCHMARKS.md, "The confirmation split").
    batch: int = 16
    _fingerprints: dict = field(default_factory=dict)
    _base_memo: dict = field(default_factory=dict)

    @classmethod
    def load(cls, base_model: str, adapters: dict[str, Path], answer_cache: Path | None = None) -> Models:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_model)
        tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(base_model).eval()
        for index, (name, path) in enumerate(adapters.items()):
            if index == 0:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        return cls(model, tokenizer, ["base", *adapters], source=str(base_model),
                   adapter_paths={name: Path(path) for name, path in adapters.items()}, answer_cache=answer_cache)

    def fingerprint(self, name: str) -> str:
        """What identifies model ``name``'s answers: the base model, and an adapter's weights and config."""
        import hashlib

        if name not in self._fingerprints:
            digest = hashlib.sha256(self.source.encode())
            local = Path(self.source)
            if local.is_dir():  # a base model prepared again at the same place is another model
                for path in sorted(local.glob("*.safetensors")):
                    digest.update(f"{path.name} {path.stat().st_size} {path.stat().st_mtime_ns}".encode())
            if name != "base":
                for path in sorted(self.adapter_paths[name].glob("adapter_*")):
                    digest.update(path.name.encode() + path.read_bytes())
            self._fingerprints[name] = digest.hexdigest()
        return self._fingerprints[name]

    def _cached_answers(self, name: str, questions: list[str], decoding: Decoding, batch: int,
                        seed: int) -> tuple[Path | None, list[str] | None]:
        import hashlib
        import json

        if self.answer_cache is None:
            return None, None
        key = hashlib.sha256(json.dumps({"model": self.fingerprint(name), "decoding": decoding.as_dict(),
                                         "questions": questions, "batch": batch, "seed": seed}).encode())
        path = self.answer_cache / f"{key.hexdigest()[:32]}.json"
        try:
            answers = json.loads(path.read_text())
        except (OSError, ValueError):
            return path, None
        return path, answers if isinstance(answers, list) and len(answers) == len(questions) else None

    def use(self, name: str):  # noqa: ANN201 - a context manager
        from contextlib import nullcontext

        if name == "base":
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
        self.model.set_adapter(name)
        return nullcontext()

    def prompt_ids(self, question: str) -> list[int]:
        return list(self.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                       add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"])

    def _fast(self, precision: str | None = None):  # noqa: ANN202 - a context manager
        """bf16 matrix products where the CPU has bf16 units and the model is big enough to gain: both
        sides of a comparison are computed the same way, so the comparison stays fair. ``precision``:
        answers are generated in serving's precision instead (``Decoding.precision``), as students get them."""
        import torch

        from trainer.config import TrainingDevice, use_bf16_on

        enabled = (precision == "bfloat16" if precision is not None
                   else use_bf16_on(TrainingDevice.detect(), self.model))
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.model.device.type == "cpu" and enabled)

    def generate(self, name: str, questions: list[str], decoding: Decoding, batch: int | None = None,
                 seed: int = 0, kind: str = ANSWERS) -> list[str]:
        """Answers decoded as the chat decodes them (``careloop.decoding``), in batches. Sampling is
        seeded per batch, so a rerun, and each model of a comparison, draws from the same seeds.
        ``kind``: what they count as in the run's progress (ANSWERS or GROUNDED_ANSWERS)."""
        import json

        import torch

        batch = batch or self.batch
        cached_at, cached = self._cached_answers(name, questions, decoding, batch, seed)
        if cached is not None:
            if self.on_batch:
                self.on_batch(generation_units(len(questions), batch), kind=kind, timed=False)
            return cached
        answers = []
        with torch.inference_mode(), self.use(name), self._fast(decoding.precision):
            for start in range(0, len(questions), batch):
                torch.manual_seed(seed + start)
                texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                            add_generation_prompt=True)
                         for q in questions[start:start + batch]]
                encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                output = self.model.generate(**encoded, **decoding.generate_kwargs(),
                                             pad_token_id=self.tokenizer.pad_token_id)
                answers += self.tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:],
                                                       skip_special_tokens=True)
                del output, encoded
                memory.trim()  # batches of varying lengths fragment the heap (trainer.memory)
                if self.on_batch:
                    self.on_batch(len(texts) + BATCH_OVERHEAD, kind=kind)
        answers = [a.strip() for a in answers]
        if cached_at is not None:
            cached_at.parent.mkdir(parents=True, exist_ok=True)
            partial = cached_at.with_suffix(".partial")
            partial.write_text(json.dumps(answers))
            partial.replace(cached_at)  # whole or not at all
        return answers

    def completion_logprobs(self, name: str, question: str, completions: list[str], mean: bool = False,
                            limit: int = 1024) -> list[float]:
        """log p(completion | question) under model ``name`` for each completion (sum, or mean per token).
        The question is run once and its KV cache reused for every completion; the base model's values
        are remembered, since every comparison needs them again."""
        import copy

        import torch

        key = (question, tuple(completions), mean, limit)
        if name == "base" and key in self._base_memo:
            if self.on_batch:
                self.on_batch(1, kind=PASSES, timed=False)
            return self._base_memo[key]
        prompt = self.prompt_ids(question)
        fulls = [list(self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": completion}],
            tokenize=True, return_dict=True)["input_ids"])[:limit] for completion in completions]
        shared = min([len(prompt), *(len(os.path.commonprefix([prompt, full])) for full in fulls)])
        results = []
        with torch.inference_mode(), self.use(name), self._fast():
            prefix = self.model(input_ids=torch.tensor([prompt[:shared]]), use_cache=True)
            for full in fulls:
                rest = full[shared:]
                if len(full) <= len(prompt) or not rest:
                    results.append(0.0)
                    continue
                out = self.model(input_ids=torch.tensor([rest]), past_key_values=copy.deepcopy(prefix.past_key_values))
                logits = torch.cat([prefix.logits[0, -1:], out.logits[0, :-1]]).float()
                logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(rest)[:, None])[:, 0]
                tail = logprobs[len(prompt) - shared:]
                results.append(float(tail.mean() if mean else tail.sum()) if len(tail) else 0.0)
            del prefix
        memory.trim()
        if self.on_batch:
            self.on_batch(1, kind=PASSES)
        if name == "base":
            self._base_memo[key] = results
        return results


def reference_scores(answers: list[str], references: list[str]) -> dict[str, list[float]]:
    import sacrebleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    wordnet, _ = meteor_variant()
    scores: dict[str, list[float]] = {"bleu": [], "rouge1": [], "rouge2": [], "rougeL": [], "meteor": []}
    for answer, reference in zip(answers, references, strict=True):
        scores["bleu"].append(sacrebleu.sentence_bleu(answer, [reference]).score / 100)
        rouge = scorer.score(reference, answer)
        for key in ("rouge1", "rouge2", "rougeL"):
            scores[key].append(rouge[key].fmeasure)
        scores["meteor"].append(meteor_score([reference.split()], answer.split(), wordnet=wordnet))
    return scores


def meteor_variant():  # noqa: ANN201
    """nltk's METEOR with WordNet synonyms when the data is installed, else exact + stem matching."""
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, "METEOR (nltk, exact + stem + WordNet synonyms)"
    except LookupError:
        return _NoSynonyms(), "METEOR (nltk, exact + stem matching only: WordNet data not installed)"


class _NoSynonyms:
    @staticmethod
    def synsets(*_args, **_kwargs) -> list:
        return []


def _mean(values: list) -> float:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else 0.0


def paired_interval(candidate: list, baseline: list, confidence: float, seed: int = 0) -> dict:
    """Mean of (candidate - baseline) over the items both have a value for, with a paired bootstrap interval."""
    both = [(c, v) for c, v in zip(candidate, baseline, strict=True) if c is not None and v is not None]
    diff = np.asarray([c - v for c, v in both], dtype=float)
    if len(diff) == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 0, "confidence": confidence}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(2000, len(diff)))].mean(axis=1)
    tail = (1 - confidence) / 2
    return {"mean": float(diff.mean()), "low": float(np.quantile(means, tail)),
            "high": float(np.quantile(means, 1 - tail)), "n": int(len(diff)), "confidence": confidence}


@dataclass(frozen=True)
class Grounding:
    """The passages each reference question is given (aligned with ``eval_reference``), found once
    and shared by every model evaluated, and how long each may be in the prompt."""

    passages: list[list[Passage]]
    passage_chars: int

    @classmethod
    def find(cls, retriever: Retriever, reference: list[dict], passage_chars: int) -> Grounding:
        return cls([retriever.search(item["question"]) for item in reference], passage_chars)


REFERENCE_METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "meteor")


@dataclass(frozen=True)
class JudgeEndpoint:
    url: str
    model: str = ""
    api_key: str = ""


def evaluate(models: Models, name: str, data: dict[str, list[dict]], decoding: Decoding,
             judge_endpoint: JudgeEndpoint | None = None, grounding: Grounding | None = None) -> dict:
    """Every track for one model; per-item values are lists aligned with the snapshot's items
    (None where an item has no value, e.g. a judge reply without scores)."""
    reference = data["eval_reference"]
    answers = models.generate(name, [r["question"] for r in reference], decoding)
    items: dict[str, list] = reference_scores(answers, [r["reference"] for r in reference])
    items["answers"] = answers
    items["degenerate"] = degenerate_flags(models, [r["question"] for r in reference], answers)
    if grounding is not None:
        questions = [grounded_question(r["question"], passages, grounding.passage_chars) if passages else r["question"]
                     for r, passages in zip(reference, grounding.passages, strict=True)]
        grounded = models.generate(name, questions, decoding, kind=GROUNDED_ANSWERS)
        for metric, values in reference_scores(grounded, [r["reference"] for r in reference]).items():
            items[f"grounded_{metric}"] = values
        items["citation_support"] = [citation_support(answer, passages).rate
                                     for answer, passages in zip(grounded, grounding.passages, strict=True)]
        items["grounded_answers"] = grounded
    if judge_endpoint is not None:
        from trainer.judge import AXES, judge

        verdicts = judge(judge_endpoint.url, judge_endpoint.model, judge_endpoint.api_key,
                         [r["question"] for r in reference], answers)
        for axis in AXES:
            items[f"judge_{axis}"] = [v[axis] if v else None for v in verdicts]
        items["judge_parsed"] = [1.0 if v else 0.0 for v in verdicts]

    pair_hits = []
    for pair in data["eval_pairs"]:  # TRL's conversational preference rows
        question, completions = prompt_text(pair), [answer_text(pair["chosen"]), answer_text(pair["rejected"])]
        policy = models.completion_logprobs(name, question, completions, limit=PAIR_TOKENS)
        base = (models.completion_logprobs("base", question, completions, limit=PAIR_TOKENS)
                if name != "base" else policy)
        margins = [p - b for p, b in zip(policy, base, strict=True)]
        pair_hits.append(1.0 if margins[0] > margins[1] else 0.5 if margins[0] == margins[1] else 0.0)
    items["pair_accuracy"] = pair_hits
    # Clinicians' pairs (the snapshot puts them first) decide the gate; the seed's are reported beside them.
    from_clinicians = [pair.get("origin") in CLINICIAN_ORIGINS for pair in data["eval_pairs"]]
    items["pair_accuracy_clinician"] = [hit for hit, mine in zip(pair_hits, from_clinicians, strict=True) if mine]
    items["pair_accuracy_seed"] = [hit for hit, mine in zip(pair_hits, from_clinicians, strict=True) if not mine]

    mcq_hits = []
    for question in data["eval_mcq"]:
        prompt = question["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in question["options"].items())
        keys = list(question["options"])
        scores = models.completion_logprobs(name, prompt, [f"{k}. {question['options'][k]}" for k in keys], mean=True)
        mcq_hits.append(1.0 if keys[scores.index(max(scores))] == question["answer"] else 0.0)
    items["mcq_accuracy"] = mcq_hits

    harmful = models.generate(name, [s["prompt"] for s in data["eval_safety"]], decoding)
    items["refusal_harmful"] = flags(refuses, harmful)
    # Over-refusal on patient-style benign questions (the confirmation split's); without them (the tuning
    # split, a user's own file) on the reference questions.
    benign = [b["prompt"] for b in data.get("eval_benign", [])]
    items["over_refusal_benign"] = flags(refuses, models.generate(name, benign, decoding) if benign else answers)
    urgent, soon, self_care = triage_levels(data)
    if urgent:  # a user's own evaluation file may have no triage items: then no triage metrics
        emergencies = models.generate(name, urgent, decoding)
        items["urgent_care_red_flags"] = flags(sends_to_care_now, emergencies)
        items["under_triage_emergencies"] = flags(under_triages, emergencies)  # sent home instead
    if self_care:
        items["over_urgency_self_care"] = flags(over_triages, models.generate(name, self_care, decoding))
    if soon:  # see a clinician within days: reported (not gated: its measures are not validated yet)
        within_days = models.generate(name, soon, decoding)
        items["clinician_soon"] = flags(refers_to_clinician, within_days)
        items["over_urgency_soon"] = flags(over_triages, within_days)
    summary = {key: _mean(values) for key, values in items.items() if key not in ("answers", "grounded_answers")}
    return {"summary": summary, "items": items}


def base_over_caution(models: Models, data: dict[str, list[dict]], decoding: Decoding) -> dict[str, list[float]]:
    """The base model's over-caution per item (benign questions refused, self-care matters over-triaged),
    to bound a candidate's against it as well as the live version's (issue 32, 5: the margin ratcheted up
    one promotion at a time). Its answers come from the answer cache when the base model was evaluated on
    these items before (as the baseline of the first run), so this rarely generates anything."""
    self_care = triage_levels(data)[2]
    benign = [b["prompt"] for b in data.get("eval_benign", [])] or [r["question"] for r in data["eval_reference"]]
    items = {"over_refusal_benign": flags(refuses, models.generate("base", benign, decoding))}
    if self_care:
        items["over_urgency_self_care"] = flags(over_triages, models.generate("base", self_care, decoding))
    return items


def triage_levels(data: dict[str, list[dict]]) -> tuple[list[str], list[str], list[str]]:
    """The triage prompts by level: emergencies, see-a-clinician-soon, self-care (a row without a level,
    from the tuning split or a user's file, is an emergency when ``urgent``, else self-care)."""
    levels: dict[str, list[str]] = {"emergency": [], "soon": [], "self_care": []}
    for item in data.get("eval_triage", []):
        levels[item.get("level") or ("emergency" if item["urgent"] else "self_care")].append(item["prompt"])
    return levels["emergency"], levels["soon"], levels["self_care"]


def degenerate_flags(models: Models, questions: list[str], answers: list[str]) -> list[float]:
    """1.0 for each unreadable answer (``trainer.measures.degenerate``: the base model's NLL of it, loops)."""
    return [1.0 if degenerate(-models.completion_logprobs("base", question, [answer], mean=True)[0], answer) else 0.0
            for question, answer in zip(questions, answers, strict=True)]


# A batch of n answers costs about BATCH_OVERHEAD + n answers' worth: decoding takes max_tokens steps
# however few rows the batch has. SmolLM2-135M on 2 cores: 19.5 + 1.4 n seconds for n = 8 to 48
# (bench/eval_batch.py), so a batch's fixed part is worth about 14 answers; counted per answer, a first
# batch of 30 put the time left of an evaluation in batches of 48 at twice its length (BENCHMARKS.md).
BATCH_OVERHEAD = 14


def generation_units(count: int, batch: int) -> int:
    """Progress units of generating ``count`` answers in batches of ``batch``."""
    full, rest = divmod(count, batch)
    return full * (batch + BATCH_OVERHEAD) + (rest + BATCH_OVERHEAD if rest else 0)


def evaluation_units(data: dict[str, list[dict]], names: list[str], grounded: bool = False,
                     batch: int = 16) -> dict[str, int]:
    """What ``evaluate`` reports for these models (Models.on_batch), by kind, for an ETA: answers
    generated in batches of ``batch`` (``generation_units``; to questions with passages apart:
    ``grounded``) and scoring passes (a log-likelihood pass over one question's completions); with an
    adapter as the baseline, the base model's over-caution answers too (``base_over_caution``)."""
    reference, benign = len(data["eval_reference"]), len(data.get("eval_benign", []))
    urgent, soon, self_care = triage_levels(data)
    calls = [reference, benign, len(data["eval_safety"]), len(urgent), len(self_care), len(soon)]
    answers = sum(generation_units(count, batch) for count in calls) * len(names)
    passes = sum(reference + len(data["eval_pairs"]) * (1 if name == "base" else 2) + len(data["eval_mcq"])
                 for name in names)
    if "baseline" in names:
        answers += generation_units(benign or reference, batch) + generation_units(len(self_care), batch)
    grounded_answers = {GROUNDED_ANSWERS: generation_units(reference, batch) * len(names)} if grounded else {}
    return {ANSWERS: answers, PASSES: passes} | grounded_answers


def retrieval_effect(results: dict, confidence: float) -> dict[str, dict]:
    """For one model: each reference metric with retrieval minus without, on the same items."""
    return {metric: paired_interval(results["items"][f"grounded_{metric}"], results["items"][metric], confidence)
            for metric in REFERENCE_METRICS if f"grounded_{metric}" in results["items"]}


def compare(candidate: dict, baseline: dict, confidence: float) -> dict[str, dict]:
    return {metric: paired_interval(candidate["items"][metric], baseline["items"][metric], confidence)
            for metric in candidate["summary"]}
