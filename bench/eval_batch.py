"""How long the evaluation takes to generate answers at different batch sizes (``eval.batch_size``).

    .venv/bin/python bench/eval_batch.py [--model DIR] [--questions 48] [--batches 16 48 8 16 48]

The confirmation split's benign questions, answered by the base model as the chat decodes them
(CARELOOP_DECODING_*, CARELOOP_ANSWER_MAX_TOKENS), once per batch size in the order given (repeat one to
see the machine's drift); prints the seconds each took and its ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from careloop.decoding import decoding_for  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from trainer.evaluate import Models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 48, 8, 16, 48])
    args = parser.parse_args()
    lines = (REPO_ROOT / "data" / "seed" / "confirm" / "benign.jsonl").read_text().splitlines()
    questions = [json.loads(line)["prompt"] for line in lines][:args.questions]
    models = Models.load(str(bench_model(args.model)), {})
    decoding = decoding_for(load_settings())
    first = None
    for batch in args.batches:
        started = time.perf_counter()
        answers = models.generate("base", questions, decoding, batch=batch)
        took = time.perf_counter() - started
        first = first or took
        words = sum(len(answer.split()) for answer in answers) / len(answers)
        print(f"batch {batch:>3}: {took:6.1f} s for {len(questions)} answers ({words:.0f} words each), "
              f"{took / first:.2f}x the first", flush=True)


if __name__ == "__main__":
    main()
