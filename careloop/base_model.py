"""Which base model careloop runs on: a hub id / local path (CARELOOP_BASE_MODEL) or the offline demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from careloop.settings import Settings


class BaseModelUnavailable(Exception):
    """The configured base model cannot be loaded; the message says which setting to change."""


@dataclass(frozen=True)
class BaseModel:
    name: str  # what /v1/models and the UI show
    source: str  # hub id or local directory passed to from_pretrained
    is_demo: bool


def demo_model_dir(settings: Settings, size: str | None = None) -> Path:
    size = size or settings.demo_size
    return settings.models_dir / ("careloop-demo" if size == "demo" else f"careloop-demo-{size}")


def base_model_name(settings: Settings) -> str:
    """The name serving reports for the base model, known without loading anything."""
    if settings.base_model:
        local = Path(settings.base_model).expanduser()
        return local.name if local.is_dir() else settings.base_model
    return demo_model_dir(settings).name


def resolve_base_model(settings: Settings, build_if_missing: bool = False) -> BaseModel:
    """Find the base model without loading its weights; build the demo model if asked to."""
    from careloop.demo_model import read_build_info

    if settings.base_model:
        local = Path(settings.base_model).expanduser()
        if local.is_dir():
            return BaseModel(base_model_name(settings), str(local), read_build_info(local) is not None)
        _check_hub_model(settings.base_model)
        return BaseModel(settings.base_model, settings.base_model, is_demo=False)

    path = demo_model_dir(settings)
    if read_build_info(path) is None:
        if not build_if_missing:
            raise BaseModelUnavailable(
                f"No base model: CARELOOP_BASE_MODEL is empty and the demo model is not built at "
                f"{path}. Run `careloop model build-demo --size {settings.demo_size}`, or set "
                "CARELOOP_BASE_MODEL to a hub model id or a local model directory."
            )
        from careloop.demo_model import build_demo_model

        build_demo_model(path, size=settings.demo_size, seed=settings.seed, seed_dir=settings.seed_data_dir)
    return BaseModel(base_model_name(settings), str(path), is_demo=True)


def _check_hub_model(model_id: str) -> None:
    """Fetch (or read from the local HF cache) only the model's config, to fail early and clearly."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_id)
    except Exception as exc:  # noqa: BLE001 - hub/network/parse errors all mean "cannot use it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelUnavailable(
            f"Cannot load base model {model_id!r} (CARELOOP_BASE_MODEL): {reason[:300]}\n"
            "Without internet access the hub is unreachable: download the model elsewhere and set "
            "CARELOOP_BASE_MODEL to its local directory, or unset CARELOOP_BASE_MODEL to use the "
            "offline demo model (`careloop model build-demo`)."
        ) from None
