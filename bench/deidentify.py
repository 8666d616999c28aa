"""PHI scrubber benchmark: precision and recall of ``feedback.deidentify`` on a labelled corpus.

    .venv/bin/python bench/deidentify.py [--corpus data/phi/notes.txt] [--show-misses]

The corpus (data/phi/notes.txt) marks each identifier as {{KIND|text}} and each piece of clinical
content that must survive as {{KEEP|text}}. An identifier counts as caught when every letter and
digit of it lies inside a span the scrubber found (of any kind: a missed kind still leaks nothing);
a found span is correct when it overlaps a labelled identifier. Reported per kind and overall:
recall (identifiers caught / labelled), precision (found spans correct / found; per kind, by the kind
the scrubber gave the span), and clinical spans kept (exactly, in the scrubbed text) / labelled.
A second corpus, data/phi/phones_heldout.txt, was written before the phone matcher was tuned and
kept out of its tuning, so it measures phone numbers on text the matcher has not been fitted to.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from feedback.deidentify import Span, find_many, scrub_many  # noqa: E402

CORPUS = REPO_ROOT / "data" / "phi" / "notes.txt"
MARK = re.compile(r"\{\{(?P<kind>[A-Z]+)\|(?P<text>[^}]*)\}\}")


@dataclass
class Note:
    text: str
    phi: list[Span] = field(default_factory=list)
    keep: list[Span] = field(default_factory=list)


@dataclass
class Scores:
    labelled: Counter = field(default_factory=Counter)
    caught: Counter = field(default_factory=Counter)
    found: int = 0
    correct: int = 0
    found_by_kind: Counter = field(default_factory=Counter)
    correct_by_kind: Counter = field(default_factory=Counter)
    keep_labelled: int = 0
    keep_kept: int = 0
    misses: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)
    lost_clinical: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return sum(self.caught.values()) / max(1, sum(self.labelled.values()))

    @property
    def precision(self) -> float:
        return self.correct / max(1, self.found)


def load_corpus(path: Path = CORPUS) -> list[Note]:
    notes = []
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    for block in "\n".join(lines).split("\n---\n"):
        block = block.strip().strip("-").strip()
        if not block:
            continue
        note, position, plain = Note(""), 0, []
        for match in MARK.finditer(block):
            plain.append(block[position:match.start()])
            start = sum(map(len, plain))
            plain.append(match.group("text"))
            span = Span(start, start + len(match.group("text")), match.group("kind"))
            (note.keep if span.kind == "KEEP" else note.phi).append(span)
            position = match.end()
        plain.append(block[position:])
        note.text = "".join(plain)
        notes.append(note)
    return notes


def evaluate(notes: list[Note]) -> Scores:
    scores = Scores()
    texts = [note.text for note in notes]
    for note, found, cleaned in zip(notes, find_many(texts), scrub_many(texts), strict=True):
        covered = {i for span in found for i in range(span.start, span.end)}
        for span in note.phi:
            scores.labelled[span.kind] += 1
            if all(i in covered for i in range(span.start, span.end) if note.text[i].isalnum()):
                scores.caught[span.kind] += 1
            else:
                scores.misses.append(f"{span.kind}: {note.text[span.start:span.end]!r}")
        for span in found:
            scores.found += 1
            scores.found_by_kind[span.kind] += 1
            if any(span.start < gold.end and gold.start < span.end for gold in note.phi):
                scores.correct += 1
                scores.correct_by_kind[span.kind] += 1
            else:
                scores.false_positives.append(f"{span.kind}: {note.text[span.start:span.end]!r}")
        for span in note.keep:
            scores.keep_labelled += 1
            if note.text[span.start:span.end] in cleaned:
                scores.keep_kept += 1
            else:
                scores.lost_clinical.append(note.text[span.start:span.end])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--show-misses", action="store_true", help="print each miss and false positive")
    args = parser.parse_args()
    notes = load_corpus(args.corpus)
    scrub_many(["Warm up the recogniser, Dr. Example."])
    started = time.perf_counter()
    scores = evaluate(notes)
    seconds = time.perf_counter() - started
    print(f"{len(notes)} notes, {sum(scores.labelled.values())} labelled identifiers, "
          f"{scores.keep_labelled} labelled clinical spans; {seconds * 1000 / len(notes):.1f} ms per note")
    print(f"\n{'kind':<8} {'labelled':>8} {'caught':>7} {'recall':>7} {'found':>6} {'correct':>7} {'precision':>9}")
    for kind in sorted(set(scores.labelled) | set(scores.found_by_kind)):
        recall = scores.caught[kind] / scores.labelled[kind] if scores.labelled[kind] else float("nan")
        found, correct = scores.found_by_kind[kind], scores.correct_by_kind[kind]
        precision = correct / found if found else float("nan")
        print(f"{kind:<8} {scores.labelled[kind]:>8} {scores.caught[kind]:>7} {recall:>7.1%} "
              f"{found:>6} {correct:>7} {precision:>9.1%}")
    print(f"{'all':<8} {sum(scores.labelled.values()):>8} {sum(scores.caught.values()):>7} {scores.recall:>7.1%} "
          f"{scores.found:>6} {scores.correct:>7} {scores.precision:>9.1%}")
    print(f"\nprecision {scores.precision:.1%} ({scores.correct} of {scores.found} found spans are identifiers)")
    print(f"clinical spans kept {scores.keep_kept} of {scores.keep_labelled}")
    if args.show_misses:
        for title, items in (("missed", scores.misses), ("false positives", scores.false_positives),
                             ("clinical content lost", scores.lost_clinical)):
            print(f"\n{title}:" + "".join(f"\n  {item}" for item in items))


if __name__ == "__main__":
    main()
