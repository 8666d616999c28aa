"""Training benchmark, one run on the same data and model (SmolLM2-135M-Instruct by default):

    .venv/bin/python bench/training.py [--model DIR|tiny] [--steps 8] [--examples 200]

Prints
  1. SFT tokens/s of careloop's SFT step (`trainer.sft.run_sft`) / a bare TRL script with the
     same settings (target >= 0.9: our wrapper costs nothing),
  2. the share of SFT batch tokens that are padding: careloop (best-fit packing) vs TRL's default
     (padded batches) (target < 10%),
  3. DPO seconds per step with and without precomputed reference log-probs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.table import print_table  # noqa: E402
from trainer.config import TrainConfig, TrainingDevice  # noqa: E402
from trainer.data import reference_conversations, sft_rows  # noqa: E402
from trainer.dpo import run_dpo  # noqa: E402
from trainer.modeling import device_arguments, lora_config  # noqa: E402
from trainer.sft import _TokenCounter, run_sft  # noqa: E402
from trainer.snapshot import build_snapshot  # noqa: E402


def bare_trl_sft(model_dir: Path, conversations: list[dict], config: TrainConfig, out: Path,
                 packing: bool) -> tuple[float, float]:
    """What a user would write with TRL alone: returns (real tokens/s, padding share)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = TrainingDevice.detect()
    batch, accumulation = config.sft.batch_shape(device)
    args = SFTConfig(output_dir=str(out), max_steps=config.sft.max_steps, learning_rate=config.sft.learning_rate,
                     per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                     max_length=config.sft.max_length, packing=packing, completion_only_loss=True,
                     seed=config.random_seed, **device_arguments(device))
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                         train_dataset=Dataset.from_list(sft_rows(conversations)),
                         processing_class=tokenizer, peft_config=lora_config(config.lora))
    counter = _TokenCounter(trainer.data_collator)  # counting only: the same wrapper for both sides
    trainer.data_collator = counter
    started = time.perf_counter()
    trainer.train()
    return counter.real / (time.perf_counter() - started), counter.padding_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="alternating careloop / bare TRL SFT runs")
    args = parser.parse_args()
    model_dir = bench_model(args.model)
    config = TrainConfig.model_validate({"sft": {"max_steps": args.steps, "max_examples": args.examples},
                                         "dpo": {"max_steps": 4},
                                         "eval": {"max_items": 8, "confirm_items": 8, "max_pairs": 8,
                                                  "eval_fraction": 0.1}})
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-training-"))
    snapshot = build_snapshot(work / "snapshot", config, REPO_ROOT / "data" / "seed", None)
    held_out = reference_conversations(snapshot.data["eval_reference"])

    warm = config.model_copy(update={"sft": config.sft.model_copy(update={"max_steps": 1})})
    bare_trl_sft(model_dir, snapshot.data["sft"], warm, work / "warm-up", packing=True)  # first-run costs
    ours_speeds, bare_speeds = [], []
    for round_index in range(args.rounds):  # alternate, so drift on a noisy machine hits both sides
        ours = run_sft(str(model_dir), snapshot.data["sft"], held_out, config.lora, config.sft,
                       work / f"ours-{round_index}", config.random_seed)
        ours_speeds.append(ours.tokens_per_second)
        bare_speeds.append(bare_trl_sft(model_dir, snapshot.data["sft"], config, work / f"bare-{round_index}",
                                        packing=True)[0])
    ours_speed, bare_packed = statistics.median(ours_speeds), statistics.median(bare_speeds)
    _, default_padding = bare_trl_sft(model_dir, snapshot.data["sft"], config, work / "bare-padded", packing=False)
    timings = {}
    for precompute in (True, False):
        dpo_config = config.dpo.model_copy(update={"precompute_ref_log_probs": precompute})
        result = run_dpo(str(model_dir), ours.adapter_dir, snapshot.data["dpo"], dpo_config,
                         work / f"dpo-{precompute}", config.random_seed)
        timings[precompute] = result

    micro, accumulation = config.sft.batch_shape(TrainingDevice.detect())
    print(f"model {model_dir.name}; {TrainingDevice.detect()}; SFT {args.steps} steps x batch {config.sft.batch_size} "
          f"({micro} x {accumulation} accumulated), max_length "
          f"{config.sft.max_length}, {len(snapshot.data['sft'])} conversations; DPO {config.dpo.max_steps} steps")
    rows = [
        (f"SFT tokens/s (median of {args.rounds}): careloop / bare TRL", f"{ours_speed:.0f} / {bare_packed:.0f}",
         f"{ours_speed / bare_packed:.2f}x", ">= 0.9"),
        ("SFT padding share: careloop (packed) / TRL default (padded)",
         f"{ours.padding_fraction:.1%} / {default_padding:.1%}", "", "< 10%"),
        ("DPO s/step: precomputed ref log-probs / computed each step",
         f"{timings[True].step_seconds:.3f} / {timings[False].step_seconds:.3f}",
         f"{timings[False].step_seconds / timings[True].step_seconds:.2f}x", ""),
        ("DPO total s (incl. precomputation): precomputed / each step",
         f"{timings[True].seconds:.1f} / {timings[False].seconds:.1f}", "", ""),
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
