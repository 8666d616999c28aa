"""The offline demo model: real tokenizer + real pretraining, loadable like any hub checkpoint."""

import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from careloop.base_model.build import BUILD_INFO_FILE, read_build_info
from careloop.base_model.demo import build_demo_model
from careloop.settings import REPO_ROOT

SEED_DIR = REPO_ROOT / "data" / "seed"


def test_pretraining_lowers_held_out_perplexity(tiny_model_dir):
    info = read_build_info(tiny_model_dir)
    assert info["demo_model"] is True
    assert 0.5e6 < info["parameters"] < 2e6  # "about 1M parameters"
    # Random init is near-uniform over the vocabulary; pretraining must cut perplexity several-fold.
    assert info["perplexity_after"] < info["perplexity_before"] / 4


def test_reloads_offline_with_auto_classes_and_generates(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    messages = [{"role": "user", "content": "What are the symptoms of diabetes?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    torch.manual_seed(0)  # the tiny model is too small for greedy decoding to say much; sample
    output = model.generate(**prompt, max_new_tokens=20, do_sample=True, temperature=1.0)
    new_tokens = output[0, prompt["input_ids"].shape[1]:]
    assert len(new_tokens) > 0
    text = tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert text.strip(), "greedy generation produced only special tokens"


def test_chat_template_marks_assistant_turns_for_assistant_only_loss(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    messages = [{"role": "user", "content": "Is aspirin an NSAID?"},
                {"role": "assistant", "content": "Yes, aspirin is an NSAID."}]
    encoded = tokenizer.apply_chat_template(messages, return_dict=True,
                                            return_assistant_tokens_mask=True)
    mask = encoded["assistant_masks"]
    answer = tokenizer.decode([t for t, m in zip(encoded["input_ids"], mask, strict=True) if m])
    assert answer == "Yes, aspirin is an NSAID.<|im_end|>"


def test_model_card_says_it_is_a_demo_model(tiny_model_dir):
    card = (tiny_model_dir / "README.md").read_text()
    assert "DEMO model" in card and "not for clinical use" in card.lower().replace("-", " ")


def test_second_build_is_a_cache_hit(tiny_model_dir):
    started = time.perf_counter()
    result = build_demo_model(tiny_model_dir, size="tiny", seed=0, seed_dir=SEED_DIR, progress=False)
    assert result.cached and time.perf_counter() - started < 2


def test_builds_are_deterministic_for_a_seed(tmp_path):
    def weights(out, seed):
        build_demo_model(out, size="tiny", seed=seed, seed_dir=SEED_DIR, steps=3, progress=False,
                         log=lambda _: None)
        return AutoModelForCausalLM.from_pretrained(out, local_files_only=True).state_dict()

    first, again, other = weights(tmp_path / "a", 1), weights(tmp_path / "b", 1), weights(tmp_path / "c", 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # A changed step count is a different build, not a stale cache hit.
    rebuilt = build_demo_model(tmp_path / "a", size="tiny", seed=1, seed_dir=SEED_DIR, steps=4,
                               progress=False, log=lambda _: None)
    assert not rebuilt.cached
    assert json.loads((tmp_path / "a" / BUILD_INFO_FILE).read_text())["key"]["steps"] == 4


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        build_demo_model(tmp_path, size="huge", seed_dir=SEED_DIR)
