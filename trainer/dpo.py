"""Step 3: DPO with TRL's DPOTrainer, continuing from the SFT adapter (reference = the SFT policy), on
the snapshot's preference pairs: TRL's conversational rows, as exported (``trainer.data``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from trainer import memory
from trainer.config import DPOSettings, LoraSettings, TrainingDevice
from trainer.data import dpo_rows, fit_to_template
from trainer.modeling import device_arguments, load_base


@dataclass(frozen=True)
class DPOResult:
    adapter_dir: Path
    train_loss: float
    reward_accuracy: float  # on the training pairs, from TRL's logs (last logged value)
    seconds: float
    step_seconds: float


def run_dpo(base_model: str, sft_adapter: Path, pairs: list[dict], settings: DPOSettings, out: Path,
            seed: int, lora: LoraSettings | None = None, callbacks: list | None = None) -> DPOResult:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    device = TrainingDevice.detect()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = PeftModel.from_pretrained(load_base(base_model, lora or LoraSettings(quantize="none"), device), sft_adapter,
                                      is_trainable=True)
    batch, accumulation = settings.batch_shape(device)
    args = DPOConfig(output_dir=str(out / "dpo-work"), max_steps=settings.max_steps,
                     learning_rate=settings.learning_rate, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accumulation, per_device_eval_batch_size=batch,
                     beta=settings.beta, loss_type=[settings.loss_type], max_length=settings.max_length,
                     precompute_ref_log_probs=settings.precompute_ref_log_probs, seed=seed,
                     **device_arguments(device, settings.checkpointing(device)))
    data = Dataset.from_list(fit_to_template(dpo_rows(pairs), tokenizer))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[*(callbacks or []), memory.trim_callback()])
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    accuracies = [entry["rewards/accuracies"] for entry in trainer.state.log_history if "rewards/accuracies" in entry]
    adapter_dir = out / "adapter"
    trained = trainer.model
    for name in [n for n in trained.peft_config if n != "default"]:  # TRL's frozen reference copy
        trained.delete_adapter(name)
    trained.save_pretrained(adapter_dir)
    return DPOResult(adapter_dir, result.training_loss, accuracies[-1] if accuracies else float("nan"), seconds,
                     seconds / max(1, result.global_step))
