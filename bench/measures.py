"""The evaluation's measures (``trainer.measures``) against answers people labelled (issue 32, 2).

    nice .venv/bin/python bench/measures.py answers --model DIR --adapter NAME=DIR ...   # generate, once
    .venv/bin/python bench/measures.py score [--write]                                   # precision / recall

``answers`` asks the tuning split's questions (never the confirmation split's: choosing or fitting a measure
is a config choice) of the base model and each adapter, decoded as the chat decodes them, and writes
``data/labels/measure_answers.jsonl``: harmful requests (``safety_eval.jsonl``), benign patient questions
(K-QA's in ``medqa_eval.jsonl``) and triage vignettes (``triage_eval.jsonl``). The labels
(``data/labels/measure_labels.jsonl``, written by people reading each answer against the rubric in
``data/labels/README.md``) say what each answer does; ``score`` prints each measure's precision and recall
against them and, with ``--write``, stores them in ``data/labels/measure_validation.json``, which every
evaluation report quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from trainer.measures import VALIDATION, validate_measures  # noqa: E402

LABELS = REPO_ROOT / "data" / "labels"
SEED = REPO_ROOT / "data" / "seed"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def questions(per_kind: int) -> list[tuple[str, str]]:
    """(kind, prompt) from the tuning split: harmful, benign, emergency and self-care."""
    harmful = [row["prompt"] for row in _jsonl(SEED / "safety_eval.jsonl")][:per_kind]
    benign = [row["question"] for row in _jsonl(SEED / "medqa_eval.jsonl") if row["id"].startswith("kqa-")][:per_kind]
    triage = _jsonl(SEED / "triage_eval.jsonl")
    return ([("harmful", q) for q in harmful] + [("benign", q) for q in benign]
            + [("emergency" if row["urgent"] else "self_care", row["prompt"]) for row in triage])


def answers(args: argparse.Namespace) -> None:
    from careloop.decoding import decoding_for
    from careloop.settings import load_settings
    from trainer.config import EvalSettings
    from trainer.evaluate import Models

    adapters = dict(pair.split("=", 1) for pair in args.adapter)
    models = Models.load(args.model, {name: Path(path) for name, path in adapters.items()})
    models.batch = EvalSettings().batch_size  # as the evaluation generates them
    decoding = decoding_for(load_settings())
    asked = questions(args.per_kind)
    rows = []
    LABELS.mkdir(parents=True, exist_ok=True)
    for name in ["base", *adapters]:
        said = models.generate(name, [prompt for _, prompt in asked], decoding)
        rows += [{"id": f"{name}-{index:03d}", "model": name, "kind": kind, "prompt": prompt, "answer": answer}
                 for index, ((kind, prompt), answer) in enumerate(zip(asked, said, strict=True))]
        # written after each model, so that labelling can start on the first while the next generates
        (LABELS / "measure_answers.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n"
                                                              for row in rows))
        print(f"{name}: {len(said)} answers", flush=True)


def score(args: argparse.Namespace) -> None:
    figures = validate_measures(_jsonl(LABELS / "measure_answers.jsonl"), _jsonl(LABELS / "measure_labels.jsonl"))
    for measure, row in figures["measures"].items():
        print(f"{measure:<22} precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
              f"(labelled yes {row['labelled']}, flagged {row['flagged']}, of {row['answers']} answers)")
    if args.write:
        VALIDATION.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"written to {VALIDATION.relative_to(REPO_ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("answers", help="generate the answers to label")
    ask.add_argument("--model", required=True, help="the base model's directory")
    ask.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="an adapter to ask too")
    ask.add_argument("--per-kind", type=int, default=50, help="harmful and benign questions each")
    check = commands.add_parser("score", help="each measure's precision and recall against the labels")
    check.add_argument("--write", action="store_true", help=f"store them in {VALIDATION.name}")
    args = parser.parse_args()
    {"answers": answers, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
