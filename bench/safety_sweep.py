"""SFT-only safety sweep on the real model: one SFT config, then greedy answers on the held-out sets.

    .venv/bin/python bench/safety_sweep.py '{"sft": {"max_steps": 16, "safety_share": 0.35}}' [--model DIR|tiny]

Prints, for the adapter trained with that config (TrainConfig's YAML shape, as JSON), the share of
held-out harmful requests refused, benign questions refused, emergency vignettes pointed to urgent
care and self-care questions sent to emergency or urgent care (the evaluation's measures,
``trainer.measures``), answers decoded as the chat decodes them up to --max-new-tokens. The base
model's figures: the same command with `{"sft": {"max_steps": 1,
"learning_rate": 1e-9}}`. Several minutes per config on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from careloop.decoding import decoding_for  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from trainer.config import LoraSettings, TrainConfig  # noqa: E402
from trainer.data import reference_conversations  # noqa: E402
from trainer.evaluate import Models  # noqa: E402
from trainer.measures import over_triages, refuses, sends_to_care_now  # noqa: E402
from trainer.sft import run_sft  # noqa: E402
from trainer.snapshot import build_snapshot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training config as JSON (TrainConfig's YAML shape)")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--show-flagged", action="store_true", help="print the benign and self-care answers flagged")
    args = parser.parse_args()
    model_dir = str(bench_model(args.model))
    chosen = json.loads(args.config)
    # A sweep chooses configs: it looks at the tuning split only, never the confirmation split the gate
    # reports on (data/seed/confirm/README.md).
    config = TrainConfig.model_validate({**chosen, "eval": {**chosen.get("eval", {}), "split": "tune"}})
    work = Path(tempfile.mkdtemp(prefix="careloop-safety-sweep-"))
    data = build_snapshot(work / "snapshot", config, REPO_ROOT / "data" / "seed", None).data
    held_out = reference_conversations(data["eval_reference"][:8])
    started = time.perf_counter()
    sft = run_sft(model_dir, data["sft"], held_out, LoraSettings(quantize="none"), config.sft, work, config.random_seed)
    trained = time.perf_counter() - started
    models = Models.load(model_dir, {"candidate": sft.adapter_dir})

    flagged: dict[str, list[str]] = {}

    decoding = replace(decoding_for(load_settings()), max_tokens=args.max_new_tokens)

    def share(prompts: list[str], measure: Callable[[str], bool], name: str) -> float:
        answers = models.generate("candidate", prompts, decoding)
        flagged[name] = [f"{q} -> {a}" for q, a in zip(prompts, answers, strict=True) if measure(a)]
        return len(flagged[name]) / len(answers)

    print(json.dumps({
        "config": config.sft.model_dump(mode="json"), "sft_seconds": round(trained), "train_loss": sft.train_loss,
        "refusal_harmful": share([s["prompt"] for s in data["eval_safety"]], refuses, "refused"),
        "over_refusal_benign": share([r["question"] for r in data["eval_reference"]], refuses, "benign refused"),
        "urgent_care_red_flags": share([t["prompt"] for t in data["eval_triage"] if t["urgent"]], sends_to_care_now,
                                       "emergency pointed to care"),
        "over_urgency_self_care": share([t["prompt"] for t in data["eval_triage"] if not t["urgent"]],
                                        over_triages, "self-care sent to the emergency department"),
        "seconds": round(time.perf_counter() - started)}, indent=1))
    if args.show_flagged:  # what the lexical measures caught, to check them by eye
        for name in ("benign refused", "self-care sent to the emergency department"):
            print(f"\n{name}:", *flagged[name], sep="\n  ")


if __name__ == "__main__":
    main()
