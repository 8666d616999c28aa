"""SFT and DPO on any chat template: the loss covers the answer's tokens only, checked token by token,
and the trained adapter serves. The templates (tests/trainer/templates) are real model families'
and none has `{% generation %}` markers; Gemma's refuses a system message. They are put on the
tiny test model's tokenizer: what is tested is the masking, not language ability."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from serving.engine import Engine, SamplingParams
from trainer.config import DPOSettings, LoraSettings, SFTSettings
from trainer.data import accepts_system_message, preference_row, sft_rows
from trainer.dpo import run_dpo
from trainer.sft import run_sft, sft_trainer

TEMPLATES = Path(__file__).with_name("templates")
END_OF_TURN = {"smollm2": "<|im_end|>", "llama2": "<|im_end|>", "qwen2_5": "<|im_end|>", "gemma": "<end_of_turn>"}

CONVERSATIONS = [
    {"messages": [{"role": "system", "content": "You are a careful medical tutor."},
                  {"role": "user", "content": "What is hypertension?"},
                  {"role": "assistant", "content": "Hypertension is blood pressure that stays high."}]},
    {"messages": [{"role": "user", "content": "What causes anemia?"},
                  {"role": "assistant", "content": "Too little iron is a common cause."},
                  {"role": "user", "content": "And how is it found?"},
                  {"role": "assistant", "content": "A blood count shows it."}]},
]
QUICK = SFTSettings(max_steps=2, batch_size=2, micro_batch_size=2, max_length=256, packing=False, max_examples=10)


@pytest.fixture(scope="module", params=sorted(END_OF_TURN))
def templated_model(request, tiny_model_dir, tmp_path_factory) -> tuple[str, Path]:
    """The tiny model with this family's chat template instead of its own."""
    out = tmp_path_factory.mktemp(f"template-{request.param}") / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "chat_template.jinja").write_text((TEMPLATES / f"{request.param}.jinja").read_text())
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return request.param, out


def test_sft_loss_covers_each_answer_and_its_end_of_turn_only(templated_model, tmp_path):
    family, model_dir = templated_model
    trainer = sft_trainer(str(model_dir), CONVERSATIONS, CONVERSATIONS[:1], LoraSettings(quantize="none"), QUICK,
                          tmp_path, seed=0)
    tokenizer = trainer.processing_class
    assert accepts_system_message(tokenizer) is (family != "gemma")
    rows = sft_rows(CONVERSATIONS)
    assert len(trainer.train_dataset) == len(rows) == 3  # one row per assistant turn
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    for index, row in enumerate(rows):
        ids, labels = batch["input_ids"][index], batch["labels"][index]
        trained = [int(t) for t, label in zip(ids, labels, strict=True) if label != -100]
        assert all(int(label) == int(token) for token, label in zip(ids, labels, strict=True) if label != -100)
        text = tokenizer.decode(trained)
        answer = row["completion"][0]["content"]
        # Exactly the answer and the template's end of turn: no prompt token, no system text.
        assert text.strip().startswith(answer), (family, text)
        assert END_OF_TURN[family] in text and text.count(answer) == 1, (family, text)
        for message in row["prompt"]:
            assert message["content"] not in text, (family, message["content"], text)
        leftover = text.strip()[len(answer):].replace(END_OF_TURN[family], "").strip()
        assert leftover == "", (family, text)


def test_sft_then_dpo_train_and_the_adapter_serves(templated_model, tmp_path):
    family, model_dir = templated_model
    sft = run_sft(str(model_dir), CONVERSATIONS, CONVERSATIONS[:1], LoraSettings(quantize="none"), QUICK,
                  tmp_path, seed=0)
    assert sft.train_loss > 0 and sft.eval_loss_after < sft.eval_loss_before * 1.5
    pairs = [preference_row("What is hypertension?", "High blood pressure.", "A bone disease.")] * 4
    dpo = run_dpo(str(model_dir), sft.adapter_dir, pairs, DPOSettings(max_steps=2, batch_size=2, max_length=128),
                  tmp_path, seed=0, lora=LoraSettings(quantize="none"))

    async def answer() -> tuple[int, str]:
        engine = Engine(str(model_dir), "tiny", True, max_batch=2)
        try:
            await engine.load_adapter("med-v0001", str(dpo.adapter_dir))
            prompt = engine.chat_prompt_ids([{"role": "user", "content": "What is hypertension?"}])
            done = await engine.submit(prompt, "med-v0001", SamplingParams(max_tokens=8, temperature=0.0,
                                                                           ignore_eos=True)).result()
            return done.completion_tokens, done.text
        finally:
            engine.shutdown()

    tokens, _ = asyncio.run(answer())
    assert tokens == 8, family
