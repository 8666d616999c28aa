"""Exported datasets go straight into TRL: one real SFT step and one real DPO step on the tiny model."""

from __future__ import annotations

import pytest

from feedback import schemas
from feedback.export import ExportConfig, export
from feedback.store import store_event


@pytest.fixture
def exported(tmp_path, tiny_model_dir):
    from careloop import db

    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    sessions = db.session_factory(db.make_engine(url))
    for index in range(6):
        store_event(sessions, schemas.CorrectionEvent(
            annotator="dr.o", prompt=f"How is hypertension {index} treated?", original="Ignore it.",
            corrected="Lifestyle changes first, then thiazides, ACE inhibitors, ARBs or calcium channel blockers."))
    return {kind: export(sessions, ExportConfig(kind, eval_fraction=0), tmp_path / kind,
                         actor="test") and tmp_path / kind
            for kind in ("sft", "dpo")}


def _args(config_class, out):
    return config_class(output_dir=str(out), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
                        gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1)


def test_sft_and_dpo_trainers_take_the_export(exported, tiny_model_dir, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sft_data = load_dataset("json", data_files=str(exported["sft"] / "train.jsonl"), split="train")
    config = _args(SFTConfig, tmp_path / "sft-run")
    config.assistant_only_loss = True
    sft = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=config,
                     train_dataset=sft_data, processing_class=tokenizer)
    assert sft.train().training_loss > 0

    dpo_data = load_dataset("json", data_files=str(exported["dpo"] / "train.jsonl"), split="train")
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                     args=_args(DPOConfig, tmp_path / "dpo-run"), train_dataset=dpo_data, processing_class=tokenizer)
    assert dpo.train().training_loss > 0
