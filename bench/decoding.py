"""Decoding: how often answers are degenerate (word salad, invented words, loops) under each decoding,
on the real default model, so the chat's default is chosen on evidence (careloop.decoding, issue 30).

Two question sets, never mixed: the TUNING questions (MedQuAD questions from the seed SFT set and the
everyday seed questions: the decodings are compared and the default is chosen on them) and the
CONFIRMATION questions (the 100 K-QA real patient questions of the held-out evaluation set: they
report today's decoding against the chosen one, once). Answers are generated as the evaluation
generates them (``trainer.evaluate.Models.generate``: the chat's prompt, the decoding, 256 tokens) and
scored with ``trainer.measures.degenerate`` (the base model's mean per-token NLL of the answer, and
the share of repeated word 4-grams), whose thresholds were set on answers labelled by hand
(``data/decoding/labelled_answers.jsonl``); the bench prints the measure's agreement with those labels.

    .venv/bin/python bench/decoding.py --set tuning --questions 12
    .venv/bin/python bench/decoding.py --set confirmation --configs today,default
    .venv/bin/python bench/decoding.py --set tuning --questions 12 --grounded --configs default,no-penalty
    # add --save FILE to keep every answer with its scores (for labelling)

One torch thread: on a shared 2-core machine two threads ran 10x slower than one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from careloop.decoding import DEFAULT, Decoding  # noqa: E402
from careloop.seed import load_seed  # noqa: E402
from careloop.settings import REPO_ROOT, load_settings  # noqa: E402
from trainer.measures import degenerate, repeated_share  # noqa: E402

SEED = REPO_ROOT / "data" / "seed"
LABELLED = REPO_ROOT / "data" / "decoding" / "labelled_answers.jsonl"
CONFIGS = {
    "today": Decoding(temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_tokens=256),  # serving's old default
    "review-before": Decoding(temperature=0.8, top_p=1.0, repetition_penalty=1.0, max_tokens=256),
    "greedy": Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_tokens=256),
    "model-card": Decoding(temperature=0.2, top_p=0.9, repetition_penalty=1.0, max_tokens=256),  # SmolLM2's card
    "greedy-penalty": Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.2, max_tokens=256),
    "default": DEFAULT,
    "no-penalty": Decoding(temperature=0.3, top_p=0.9, repetition_penalty=1.0, max_tokens=256),
    "penalty-1.05": Decoding(temperature=0.3, top_p=0.9, repetition_penalty=1.05, max_tokens=256),
}


def questions(which: str, count: int) -> list[str]:
    if which == "confirmation":
        return [r.question for r in load_seed(SEED, "eval") if r.id.startswith("kqa-")][:count]
    rows = [json.loads(line) for line in (SEED / "medqa_sft.jsonl").read_text().split("\n") if line]
    rows += [json.loads(line) for line in (SEED / "everyday_sft.jsonl").read_text().split("\n") if line]
    rng = random.Random(11)
    medquad = [r["messages"][0]["content"] for r in rows if r["id"].startswith("medquad")]
    everyday = [r["messages"][0]["content"] for r in rows if r["id"].startswith("everyday")]
    return rng.sample(medquad, count // 2) + rng.sample(everyday, count - count // 2)


def grounded(asked: list[str]) -> list[str]:
    """Each question as the chat asks it: with the passages the library gives it (the chat's settings)."""
    import tempfile

    from careloop import db
    from library.grounding import grounded_question
    from library.index import Retriever

    home = Path(tempfile.mkdtemp(prefix="decoding-bench-"))
    url = f"sqlite:///{home / 'careloop.db'}"
    db.upgrade(url)
    settings = load_settings(home=home, database_url=url)
    retriever = Retriever(settings, db.sessions_for(url))
    prompts = []
    for question in asked:
        passages = retriever.search(question)
        chars = settings.retrieval_passage_chars
        prompts.append(grounded_question(question, passages, chars) if passages else question)
    with_passages = sum(p != q for p, q in zip(prompts, asked, strict=True))
    print(f"grounded: {with_passages} of {len(asked)} questions got passages")
    return prompts


def scored(models, asked: list[str], answers: list[str]) -> list[dict]:
    rows = []
    for question, answer in zip(asked, answers, strict=True):
        nll = -models.completion_logprobs("base", question, [answer], mean=True)[0] if answer.strip() else 0.0
        rows.append({"question": question, "answer": answer, "nll": round(nll, 3),
                     "repeated": round(repeated_share(answer), 3), "degenerate": degenerate(nll, answer)})
    return rows


def label_agreement(models) -> None:
    """The measure against the hand labels (thresholds set on them: an in-sample figure, said so)."""
    if not LABELLED.is_file():
        print(f"no labelled answers at {LABELLED}")
        return
    for split in ("tuning", "confirmation"):
        rows = [json.loads(line) for line in LABELLED.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            continue
        agree = 0
        for row in rows:
            nll = -models.completion_logprobs("base", row["question"], [row["answer"]], mean=True)[0]
            agree += degenerate(nll, row["answer"]) == row["degenerate"]
        print(f"measure vs hand labels ({split}{', thresholds set here' if split == 'tuning' else ''}): "
              f"{agree}/{len(rows)} agree")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("tuning", "confirmation"), default="tuning")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--configs", default="today,greedy,model-card,default")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--save", type=Path, help="write every answer and its scores here (JSONL)")
    parser.add_argument("--grounded", action="store_true", help="ask as the chat does: with the library's passages "
                        "(NLL scored given the grounded prompt)")
    args = parser.parse_args()

    import torch

    from careloop.base_model import resolve_base_model
    from trainer.evaluate import Models

    torch.set_num_threads(1)
    base = resolve_base_model(load_settings(), build_if_missing=True)
    models = Models.load(base.name_or_path, {})
    asked = questions(args.set, args.questions)
    if args.grounded:
        asked = grounded(asked)
    print(f"{base.name}, {len(asked)} {args.set} questions, {args.max_tokens} new tokens")
    label_agreement(models)
    saved = []
    for name in args.configs.split(","):
        decoding = replace(CONFIGS[name], max_tokens=args.max_tokens)
        started = time.perf_counter()
        rows = scored(models, asked, models.generate("base", asked, decoding, batch=12))
        bad = sum(r["degenerate"] for r in rows)
        print(f"{name:15} {decoding.describe():60} degenerate {bad}/{len(rows)} = {bad / len(rows):.2f}  "
              f"mean NLL {sum(r['nll'] for r in rows) / len(rows):.2f}  ({time.perf_counter() - started:.0f} s)",
              flush=True)
        saved += [{"config": name, "split": args.set, **r} for r in rows]
    if args.save:
        args.save.write_text("".join(json.dumps(r) + "\n" for r in saved))


if __name__ == "__main__":
    main()
