"""The embedded engine's precision: float32 against bfloat16 weights, side by side in one run.

    .venv/bin/python bench/precision.py [--model DIR] [--tokens 64] [--rounds 2]

Two engines (``serving.engine.Engine``, in this process, no HTTP) on the same model answer the same 8
medical questions greedily, exactly --tokens tokens each (``ignore_eos``): one request alone, then all
8 at once; each figure the best of --rounds, the two engines taking turns so machine noise falls on
both. Prints tokens/s for each precision, the bf16/fp32 ratios, how many of the 8 batched greedy
answers are the same in both precisions, and whether this CPU has bf16 units (without AVX512-BF16 or
AMX, bf16 is emulated and the ratio falls below 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.serving import QUESTIONS  # noqa: E402
from bench.table import print_table  # noqa: E402
from trainer.config import cpu_has_bf16  # noqa: E402


def answers(engine, count: int, tokens: int) -> tuple[float, list[str]]:  # noqa: ANN001 - an Engine
    """``count`` questions submitted at once: (tokens/s, answer texts)."""
    from serving.engine import SamplingParams

    async def run() -> list[str]:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        handles = [engine.submit(engine.chat_prompt_ids([{"role": "user", "content": q}]), None, params)
                   for q in QUESTIONS[:count]]
        return [(await handle.result()).text for handle in handles]

    started = time.perf_counter()
    texts = asyncio.run(run())
    return count * tokens / (time.perf_counter() - started), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per answer")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each figure is the best round")
    args = parser.parse_args()
    import torch

    from serving.engine import Engine

    model_dir = bench_model(args.model)
    engines = {name: Engine(str(model_dir), model_dir.name, False, max_batch=len(QUESTIONS), dtype=dtype)
               for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    best: dict[tuple[str, int], float] = {}
    texts: dict[str, list[str]] = {}
    try:
        for name, engine in engines.items():  # warm-up
            answers(engine, 1, 8)
        for _ in range(args.rounds):
            for name, engine in engines.items():
                for count in (1, len(QUESTIONS)):
                    speed, texts[name] = answers(engine, count, args.tokens)
                    best[name, count] = max(best.get((name, count), 0.0), speed)
    finally:
        for engine in engines.values():
            engine.shutdown()

    same = sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"], strict=True))
    print(f"model {model_dir.name}, {args.tokens} tokens per answer, best of {args.rounds} rounds, torch threads "
          f"{torch.get_num_threads()}; this CPU has bf16 units: {'yes' if cpu_has_bf16() else 'no'}")
    rows = []
    for count, label in ((1, "one request alone"), (len(QUESTIONS), f"{len(QUESTIONS)} at once")):
        fp32, bf16 = best["float32", count], best["bfloat16", count]
        rows.append((f"{label}: tokens/s float32 / bfloat16", f"{fp32:.1f} / {bf16:.1f}", f"{bf16 / fp32:.2f}x",
                     "> 1x where the CPU has bf16 units"))
    rows.append(("greedy answers the same in both precisions", f"{same} of {len(QUESTIONS)}", "", "reported"))
    print_table(rows)


if __name__ == "__main__":
    main()
