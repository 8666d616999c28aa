"""Where every answer's decoding comes from (careloop.decoding): the settings, then the base model's
generation config, then careloop's default, field by field."""

from __future__ import annotations

import json

import pytest

from careloop.decoding import DEFAULT, decoding_for, from_generation_config, resolve
from careloop.settings import SettingsError, load_settings


def test_the_settings_win_then_the_models_generation_config_then_careloops_default():
    settings = load_settings(answer_max_tokens=99)
    assert resolve(settings, None) == DEFAULT.__class__(DEFAULT.temperature, DEFAULT.top_p,
                                                        DEFAULT.repetition_penalty, 99)
    model = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "bos_token_id": 1}
    assert resolve(settings, model).temperature == 0.6 and resolve(settings, model).top_p == 0.95
    assert resolve(settings, model).repetition_penalty == DEFAULT.repetition_penalty  # the model says nothing
    chosen = load_settings(decoding_temperature=0.0, decoding_repetition_penalty=1.0)
    assert (resolve(chosen, model).temperature, resolve(chosen, model).top_p,
            resolve(chosen, model).repetition_penalty) == (0.0, 0.95, 1.0)


def test_answers_are_evaluated_in_the_precision_serving_computes_in():
    assert resolve(load_settings(), None).precision == "float32"
    bf16 = resolve(load_settings(serving_dtype="bfloat16"), None)
    assert bf16.precision == "bfloat16" and bf16.describe().endswith(", in bfloat16")
    assert "precision" not in bf16.request_params() and "precision" not in bf16.generate_kwargs()


def test_a_generation_config_is_read_with_transformers_meaning():
    assert from_generation_config({"bos_token_id": 1, "eos_token_id": 2}) == {}  # SmolLM2's own file
    assert from_generation_config({"do_sample": False, "temperature": 0.7}) == {"temperature": 0.0}
    assert from_generation_config({"do_sample": True}) == {"temperature": 1.0, "top_p": 1.0}
    assert from_generation_config({"repetition_penalty": 1.2}) == {"repetition_penalty": 1.2}


def test_the_base_models_file_is_read_from_its_directory_and_a_broken_one_is_ignored(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.5}))
    assert decoding_for(load_settings(base_model=str(tmp_path))).temperature == 0.5
    (tmp_path / "generation_config.json").write_text("{not json")
    assert decoding_for(load_settings(base_model=str(tmp_path))) == resolve(load_settings(), None)


def test_each_part_sends_the_same_request_parameters():
    params = DEFAULT.request_params(seed=5)
    assert params == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 256, "seed": 5,
                      "extra_body": {"repetition_penalty": 1.1}}
    assert DEFAULT.generate_kwargs() == {"max_new_tokens": 256, "do_sample": True, "temperature": 0.3,
                                         "top_p": 0.9, "repetition_penalty": 1.1}
    greedy = resolve(load_settings(decoding_temperature=0), None)
    assert greedy.generate_kwargs()["do_sample"] is False and "temperature" not in greedy.generate_kwargs()
    assert "greedy" in greedy.describe()


@pytest.mark.parametrize(("name", "value"), [("decoding_temperature", "3"), ("decoding_top_p", "0"),
                                             ("decoding_repetition_penalty", "0.5"), ("answer_max_tokens", "0")])
def test_a_bad_decoding_setting_stops_with_its_name(monkeypatch, name, value):
    monkeypatch.setenv(f"CARELOOP_{name.upper()}", value)
    with pytest.raises(SettingsError, match=f"CARELOOP_{name.upper()}"):
        load_settings()


def test_a_training_config_that_still_sets_the_evaluations_length_is_told_where_it_went(tmp_path):
    from trainer.config import ConfigError, TrainConfig

    path = tmp_path / "train.yaml"
    path.write_text("eval: {max_items: 10, max_new_tokens: 48}\n")
    with pytest.raises(ConfigError, match="CARELOOP_ANSWER_MAX_TOKENS"):
        TrainConfig.from_yaml(path)
