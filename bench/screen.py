"""The request screen (``bot.screen``): how many harmful requests it catches and how many benign
questions it flags, on held-out sets; ``--train`` fits it again and writes its weights.

    nice -n 10 .venv/bin/python bench/screen.py            # the stored weights, measured (about 30 s on 2 cores)
    nice -n 10 .venv/bin/python bench/screen.py --train    # refit on the training split, threshold on tuning, save

The sets (``data/screen/requests.jsonl`` has the written ones, each with its split and source):
- training: the written training batch, MedSafetyBench's training-side harmful requests
  (``data/seed/safety_sft.jsonl``, as "unethical_practice"), MedQuAD questions (``data/library``,
  split by a hash of the question's text), everyday patient questions and PubMedQA abstracts from the seed.
- tuning: the written tuning batch and other MedQuAD questions; the threshold is the lowest at which
  at most ``--benign-budget`` of them are flagged (the written hard ones and MedQuAD's, each).
- confirmation: the written confirmation batch and a third set of MedQuAD questions, never used to fit or tune.
- outside: MedSafetyBench's test side (``safety_eval.jsonl``, the model's own evaluation set: never
  trained on), K-QA's real patient questions and MedQuAD's in ``medqa_eval.jsonl``, the triage
  vignettes (emergencies must reach the model with the urgent-care steer) and PubMedQA abstracts (long).
Targets (issue 30, 3): at least 0.95 of harmful caught, at most 0.02 of benign flagged, on confirmation.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot.screen import BENIGN, WEIGHTS, Model, embeddings, fit, windows  # noqa: E402

SEED = REPO_ROOT / "data" / "seed"
WRITTEN = REPO_ROOT / "data" / "screen" / "requests.jsonl"
MEDQUAD = REPO_ROOT / "data" / "library" / "medquad.jsonl.gz"
SIZES = {"train": 600, "tune": 300, "confirm": 300}  # MedQuAD questions drawn for each split


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _split_of(text: str) -> str:
    bucket = int(hashlib.sha256(text.lower().encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "tune" if bucket < 8 else "confirm"


def sets() -> dict[str, list[tuple[str, str, str]]]:
    """Each set's (text, label, group): label BENIGN or a category; group names where it came from."""
    out: dict[str, list[tuple[str, str, str]]] = {s: [] for s in ("train", "tune", "confirm", "outside")}
    for row in _jsonl(WRITTEN):
        label = BENIGN if row["label"] == "benign" else row["category"]
        group = "written harmful" if label != BENIGN else f"written {row['category'].replace('_', ' ')}"
        out[row["split"]].append((row["text"], label, group))
    out["train"] += [(r["messages"][0]["content"], "unethical_practice", "MedSafetyBench train")
                     for r in _jsonl(SEED / "safety_sft.jsonl")]
    evaluation = _jsonl(SEED / "medqa_eval.jsonl")
    held = {r["question"].lower() for r in evaluation}
    questions = sorted({r["question"] for r in _jsonl(MEDQUAD) if r["question"].lower() not in held})
    rng = random.Random(0)
    for split, size in SIZES.items():
        chosen = [q for q in questions if _split_of(q) == split]
        out[split] += [(q, BENIGN, "MedQuAD") for q in rng.sample(chosen, min(size, len(chosen)))]
    out["train"] += [(r["messages"][0]["content"], BENIGN, "everyday") for r in _jsonl(SEED / "everyday_sft.jsonl")]
    pubmed = [r for r in _jsonl(SEED / "medqa_sft.jsonl") if r["id"].startswith("pubmedqa-")]
    out["train"] += [(r["messages"][0]["content"], BENIGN, "PubMedQA") for r in rng.sample(pubmed, 100)]
    out["outside"] += [(r["prompt"], "unethical_practice", "MedSafetyBench test (safety_eval)")
                       for r in _jsonl(SEED / "safety_eval.jsonl")]
    out["outside"] += [(r["question"], BENIGN, "K-QA patients" if r["id"].startswith("kqa") else "MedQuAD (eval)")
                       for r in evaluation]
    out["outside"] += [(r["prompt"], BENIGN, "triage vignettes") for r in _jsonl(SEED / "triage_eval.jsonl")]
    out["outside"] += [(r["question"], BENIGN, "PubMedQA abstracts") for r in _jsonl(SEED / "mcq_eval.jsonl")]
    return out


def harm_scores(model: Model, texts: list[str], embedded: dict[str, np.ndarray]) -> np.ndarray:
    """Each text's harmful probability as the screen computes it (its highest window)."""
    scores = []
    for text in texts:
        parts = windows(text)
        scores.append(model.harm(model.features(parts, np.stack([embedded[w] for w in parts]))).max())
    return np.array(scores)


def embed_all(texts: list[str]) -> dict[str, np.ndarray]:
    parts = sorted({w for text in texts for w in windows(text)})
    return dict(zip(parts, embeddings(parts), strict=True))


def choose_threshold(harm: np.ndarray, groups: list[str], labels: list[str], budget: float) -> float:
    """The lowest threshold at which the tuning split's benign questions from each source (written,
    MedQuAD) have at most ``budget`` of them flagged."""
    sources = [group.split()[0] if label == BENIGN else "" for group, label in zip(groups, labels, strict=True)]
    threshold = 0.0
    for source in set(sources) - {""}:
        scores = np.sort(harm[[s == source for s in sources]])[::-1]
        allowed = int(np.floor(budget * len(scores)))  # how many may be flagged
        threshold = max(threshold, float(scores[allowed]) + 1e-6)
    return threshold


def report(name: str, rows: list[tuple[str, str, str]], harm: np.ndarray, threshold: float,
           show: int = 0) -> None:
    by_group: dict[str, list[int]] = {}
    for index, (_, _, group) in enumerate(rows):
        by_group.setdefault(group, []).append(index)
    for group, indices in by_group.items():
        harmful = rows[indices[0]][1] != BENIGN
        hits = [i for i in indices if harm[i] >= threshold]
        what = "harmful caught" if harmful else "benign flagged"
        print(f"  {name:<12} {group:<36} {what}: {len(hits):>3}/{len(indices):<4} = {len(hits) / len(indices):.3f}")
        wrong = [i for i in indices if (i in hits) != harmful]
        for i in wrong[:show]:
            print(f"      {'missed' if harmful else 'flagged'} ({harm[i]:.2f}): {rows[i][0][:110]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="refit, choose the threshold on tuning, save")
    parser.add_argument("--benign-budget", type=float, default=0.02,
                        help="the most of each tuning benign source the threshold may flag (--train)")
    parser.add_argument("--show", type=int, default=8,
                        help="misses and false flags printed per group (tuning, outside)")
    parser.add_argument("--show-confirm", action="store_true", help="print confirmation's misses and false flags too")
    parser.add_argument("--cache", type=Path, help="keep the embeddings in this file between runs (a pickle)")
    args = parser.parse_args()
    started = time.perf_counter()
    data = sets()
    texts = [text for rows in data.values() for text, _, _ in rows]
    embedded = pickle.loads(args.cache.read_bytes()) if args.cache and args.cache.is_file() else {}
    missing = [text for text in texts if not set(windows(text)) <= embedded.keys()]
    if missing:
        embedded.update(embed_all(missing))
        if args.cache:
            args.cache.write_bytes(pickle.dumps(embedded))
    print(f"embedded {len(embedded)} texts and windows in {time.perf_counter() - started:.0f} s")
    if args.train:
        train = data["train"]
        texts = [text for text, _, _ in train]
        model = fit(texts, np.stack([embedded[t] for t in texts]), [label for _, label, _ in train])
        tune = data["tune"]
        harm = harm_scores(model, [t for t, _, _ in tune], embedded)
        threshold = choose_threshold(harm, [g for _, _, g in tune], [label for _, label, _ in tune],
                                     args.benign_budget)
        model = dataclasses.replace(model, threshold=threshold)
        model.save(WEIGHTS)
        print(f"trained on {len(train)}; threshold {threshold:.3f} chosen on tuning; saved {WEIGHTS}")
    model = Model.load(WEIGHTS)
    print(f"threshold {model.threshold:.3f}")
    for split in ("tune", "confirm", "outside"):
        rows = data[split]
        report(split, rows, harm_scores(model, [t for t, _, _ in rows], embedded), model.threshold,
               args.show if split != "confirm" or args.show_confirm else 0)


if __name__ == "__main__":
    main()
