"""Review fill benchmark: how fast a fill makes items, and what it costs a student chatting meanwhile.

    .venv/bin/python bench/fill.py [--model DIR] [--items 8] [--concurrency 1,4] [--tokens 256]

Against one `careloop serve` of the model (default SmolLM2-135M-Instruct), in this one run:
  1. a student alone: one streamed question every few seconds, decoded as the chat decodes
     (time to first token and whole answer, p50/p95) — the reference;
  2. for each fill concurrency (CARELOOP_REVIEW_FILL_CONCURRENCY): a fill of --items seed questions,
     two answers each (careloop's decoding, --tokens at most), with the same student asking meanwhile;
     the fill's wall time, items a minute, and the student's figures beside the reference.

Prints the ratios side by side (machines here are noisy: only figures from one run are compared).
Each configuration fills a fresh SQLite store; retrieval is off (ungrounded prompts, shorter than
the chat's grounded ones: the fill's own cost is what is compared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.serving import TOKEN, start_server  # noqa: E402
from careloop import db  # noqa: E402
from careloop.decoding import decoding_for  # noqa: E402
from careloop.log import configure_logging  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from feedback.generation import fill_review_queue  # noqa: E402
from serving.client import ServingClient  # noqa: E402

STUDENT_QUESTIONS = ["What are the symptoms of hypertension?", "How is asthma treated?", "What causes anaemia?",
                     "What is metformin used for?", "How do I know if a cut is infected?"]


class Student:
    """Asks a question every ``pause`` seconds until stopped; records time to first token and whole answer."""

    def __init__(self, client: ServingClient, params: dict, pause: float):
        self.client, self.params, self.pause = client, params, pause
        self.first: list[float] = []
        self.whole: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Student:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        asked = 0
        while not self._stop.is_set():
            question = [{"role": "user", "content": STUDENT_QUESTIONS[asked % len(STUDENT_QUESTIONS)]}]
            started, first = time.perf_counter(), None
            for delta in self.client.stream_chat(question, **self.params, seed=asked):
                if first is None and delta.text:
                    first = time.perf_counter() - started
            if first is not None:
                self.first.append(first)
                self.whole.append(time.perf_counter() - started)
            asked += 1
            self._stop.wait(self.pause)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--items", type=int, default=8, help="items each fill makes")
    parser.add_argument("--concurrency", default="1,4", help="fill concurrencies to compare, comma-separated")
    parser.add_argument("--tokens", type=int, default=256, help="answer length (CARELOOP_ANSWER_MAX_TOKENS)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between the student's questions")
    parser.add_argument("--alone-seconds", type=float, default=90.0, help="how long the student asks alone")
    args = parser.parse_args()
    configure_logging("WARNING")
    model = bench_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-fill-"))
    (work / "adapters").mkdir()
    process, url = start_server(work, model, work / "adapters")
    rows, figures = [], {}
    try:
        base = load_settings(home=work, base_model=str(model), serving_url=url, control_token=TOKEN,
                             answer_max_tokens=args.tokens, review_gold_fraction=0.0, retrieval_enabled=False)
        client = ServingClient(url, token=TOKEN)
        params = decoding_for(base).request_params()
        client.chat([{"role": "user", "content": "Hello"}], max_tokens=4)  # warm-up
        with Student(client, params, args.pause) as alone:
            time.sleep(args.alone_seconds)
        figures["alone"] = alone
        rows.append(("student alone", "-", *_student(alone)))
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            database = f"sqlite:///{work / f'fill-{concurrency}.db'}"
            db.upgrade(database)
            settings = base.model_copy(update={"database_url": database, "review_fill_concurrency": concurrency})
            sessions = db.session_factory(db.make_engine(database))
            with Student(client, params, args.pause) as student:
                started = time.perf_counter()
                made = fill_review_queue(settings, sessions, client, args.items)
                seconds = time.perf_counter() - started
            items = made.seed + made.student
            figures[concurrency] = (items / seconds * 60, student)
            rows.append((f"fill, concurrency {concurrency}",
                         f"{items} items in {seconds:.0f} s: {items / seconds * 60:.1f}/min", *_student(student)))
        client.close()
    finally:
        process.terminate()
        process.wait(30)
    print(f"\nmodel: {model.name}; answers of at most {args.tokens} tokens, careloop's decoding")
    table = [("configuration", "fill", "student TTFT p50 / p95 (s)", "whole answer p50 / p95 (s)"), *rows]
    widths = [max(len(row[column]) for row in table) for column in range(4)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    levels = [key for key in figures if key != "alone"]
    if len(levels) > 1:
        low, high = levels[0], levels[-1]
        print(f"\nitems a minute, concurrency {high} / {low}: {figures[high][0] / figures[low][0]:.2f}x")
        for level in levels:
            ratio = statistics.median(figures[level][1].first) / statistics.median(figures['alone'].first)
            print(f"student TTFT p50 beside a fill at concurrency {level} / alone: {ratio:.2f}x")


def _student(student: Student) -> tuple[str, str]:
    return (f"{percentile(student.first, 0.5):.2f} / {percentile(student.first, 0.95):.2f} (n={len(student.first)})",
            f"{percentile(student.whole, 0.5):.1f} / {percentile(student.whole, 0.95):.1f}")


if __name__ == "__main__":
    main()
