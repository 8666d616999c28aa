"""Trainer memory: peak resident memory and seconds per step of SFT and DPO, side by side in one run,
for the settings that trade memory for time (SmolLM2-135M-Instruct by default):

    .venv/bin/python bench/training_memory.py [--model DIR|tiny] [--steps 6]

Each variant's SFT and DPO run in a fresh process of their own (peak RSS from the OS, so nothing of
one variant stays in another's figure), on the default config's snapshot and shapes. Prints, per
variant: SFT peak RSS and tokens/s, DPO peak RSS and s/step, each as a ratio to the defaults'. The 4 GB target is for
a whole `careloop train`; the steps' peaks here are what decide it (evaluation stays lower).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.table import print_table  # noqa: E402

VARIANTS = {  # name -> config overrides on top of TrainConfig()
    "defaults": {},
    "LoRA dropout 0": {"lora": {"dropout": 0.0}},
    "gradient checkpointing": {"sft": {"gradient_checkpointing": True}, "dpo": {"gradient_checkpointing": True}},
    "SFT micro-batch 1": {"sft": {"micro_batch_size": 1}},
}


def one_step(kind: str, model_dir: str, overrides: dict, steps: int, work: Path, sft_adapter: str) -> dict:
    """In this process: one SFT or DPO run of ``steps`` steps; its speed (SFT tokens/s, DPO seconds per
    step) and this process's peak RSS."""
    from trainer.config import TrainConfig
    from trainer.data import reference_conversations
    from trainer.dpo import run_dpo
    from trainer.sft import run_sft
    from trainer.snapshot import build_snapshot

    merged = TrainConfig().model_dump(mode="json")
    for section, values in overrides.items():
        merged[section] |= values
    merged["sft"]["max_steps"] = merged["dpo"]["max_steps"] = steps
    config = TrainConfig.model_validate(merged)
    snapshot = build_snapshot(work / "snapshot", config, REPO_ROOT / "data" / "seed", None)
    if kind == "sft":
        result = run_sft(model_dir, snapshot.data["sft"], reference_conversations(snapshot.data["eval_reference"][:4]),
                         config.lora, config.sft, work, config.random_seed)
        speed = result.tokens_per_second
    else:
        speed = run_dpo(model_dir, Path(sft_adapter), snapshot.data["dpo"], config.dpo, work, config.random_seed,
                        config.lora).step_seconds
    return {"speed": speed, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure(kind: str, model_dir: Path, variant: str, steps: int, work: Path, sft_adapter: Path | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, variant, str(model_dir), str(steps), str(work),
                          str(sft_adapter or "")], capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{kind} with {variant!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, variant, model_dir, steps, work, sft_adapter = sys.argv[2:8]
        print(json.dumps(one_step(kind, model_dir, VARIANTS[variant], int(steps), Path(work), sft_adapter)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    model_dir = bench_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-memory-"))
    results = {}
    for variant in VARIANTS:
        sft = measure("sft", model_dir, variant, args.steps, work / variant / "sft", None)
        dpo = measure("dpo", model_dir, variant, args.steps, work / variant / "dpo",
                      work / "defaults" / "sft" / "sft-adapter")
        results[variant] = (sft, dpo)
    base = results["defaults"]
    print(f"model {model_dir.name}; {args.steps} SFT and DPO steps per variant, the default shapes otherwise")
    rows = []
    for index, (kind, measure_name, unit) in enumerate((("SFT", "peak RSS", "GB"), ("SFT", "tokens/s", ""),
                                                        ("DPO", "peak RSS", "GB"), ("DPO", "s/step", "s"))):
        key = "peak_rss" if measure_name == "peak RSS" else "speed"
        for variant, steps in results.items():
            value = steps[index // 2][key]
            shown = f"{value / 1e9:.2f} GB" if key == "peak_rss" else f"{value:.1f}{' ' + unit if unit else ''}"
            rows.append((f"{kind} {measure_name}: {variant}", shown, f"{value / base[index // 2][key]:.2f}x",
                         "<= 4 GB (a whole run)" if key == "peak_rss" and variant == "defaults" else ""))
    print_table(rows)


if __name__ == "__main__":
    main()
