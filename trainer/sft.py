"""Step 2: supervised fine-tuning of a LoRA adapter with TRL's SFTTrainer (loss on answers only, any chat template)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer import memory
from trainer.config import LoraSettings, SFTSettings, TrainingDevice
from trainer.data import fit_to_template, sft_rows
from trainer.modeling import device_arguments, load_base, lora_config


@dataclass(frozen=True)
class SFTResult:
    adapter_dir: Path
    train_loss: float
    eval_loss_before: float
    eval_loss_after: float
    tokens_per_second: float
    padding_fraction: float  # share of the tokens in training batches that were padding


def sft_trainer(base_model: str, conversations: list[dict], held_out: list[dict], lora: LoraSettings,
                settings: SFTSettings, out: Path, seed: int, callbacks: list | None = None):  # noqa: ANN201
    """TRL's SFTTrainer over prompt/completion rows (trainer.data): the loss covers answer tokens only,
    whatever the chat template."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    device = TrainingDevice.detect()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    batch, accumulation = settings.batch_shape(device)
    args = SFTConfig(output_dir=str(out / "sft-work"), max_steps=settings.max_steps,
                     learning_rate=settings.learning_rate,
                     per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                     max_length=settings.max_length, packing=settings.packing, completion_only_loss=True,
                     seed=seed, per_device_eval_batch_size=batch * 2, warmup_steps=min(5, settings.max_steps // 10),
                     **device_arguments(device, settings.checkpointing(device)))
    train = Dataset.from_list(fit_to_template(sft_rows(conversations), tokenizer))
    evaluation = Dataset.from_list(fit_to_template(sft_rows(held_out), tokenizer))
    return SFTTrainer(model=load_base(base_model, lora, device), args=args, train_dataset=train,
                      eval_dataset=evaluation, processing_class=tokenizer, peft_config=lora_config(lora),
                      callbacks=[*(callbacks or []), memory.trim_callback()])


def run_sft(base_model: str, conversations: list[dict], held_out: list[dict], lora: LoraSettings,
            settings: SFTSettings, out: Path, seed: int, callbacks: list | None = None) -> SFTResult:
    import time

    trainer = sft_trainer(base_model, conversations, held_out, lora, settings, out, seed, callbacks)
    before = trainer.evaluate()["eval_loss"]
    counter = _TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    after = trainer.evaluate()["eval_loss"]
    adapter_dir = out / "sft-adapter"
    trainer.model.save_pretrained(adapter_dir)
    trainer.processing_class.save_pretrained(adapter_dir)
    return SFTResult(adapter_dir, result.training_loss, before, after, counter.real / seconds, counter.padding_fraction)


class _TokenCounter:
    """Wraps the trainer's data collator to count real and padding tokens in each batch."""

    def __init__(self, collate):  # noqa: ANN001 - a transformers data collator
        self.collate = collate
        self.real = 0
        self.total = 0

    def __call__(self, features):  # noqa: ANN001, ANN204
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        if mask is None:  # padding-free (packed) batches carry position_ids instead of a mask
            self.real += batch["input_ids"].numel()
            self.total += batch["input_ids"].numel()
        else:
            self.real += int(mask.sum())
            self.total += mask.numel()
        return batch

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real / self.total if self.total else 0.0
