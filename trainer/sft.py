"""Step 2: supervised fine-tuning of a LoRA adapter with TRL's SFTTrainer (assistant-only loss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.config import LoraSettings, SFTSettings


@dataclass(frozen=True)
class SFTResult:
    adapter_dir: Path
    train_loss: float
    eval_loss_before: float
    eval_loss_after: float
    tokens_per_second: float
    padding_fraction: float  # share of the tokens in training batches that were padding


def lora_config(settings: LoraSettings):  # noqa: ANN201 - peft.LoraConfig
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")


def load_base(base_model: str, lora: LoraSettings):  # noqa: ANN201 - a transformers model
    """The base model to train an adapter on: full precision, or 4-bit NF4 for QLoRA."""
    from transformers import AutoModelForCausalLM

    if not lora.use_4bit():
        return AutoModelForCausalLM.from_pretrained(base_model)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute))
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def cpu_arguments(**overrides) -> dict:
    """TRL defaults to bf16 and gradient checkpointing, both slower on a CPU (see STACK.md)."""
    import torch

    on_gpu = torch.cuda.is_available()
    return {"use_cpu": not on_gpu, "bf16": on_gpu and torch.cuda.is_bf16_supported(), "gradient_checkpointing": False,
            "report_to": [], "save_strategy": "no", "logging_steps": 5, "disable_tqdm": True, **overrides}


def run_sft(base_model: str, conversations: list[dict], held_out: list[dict], lora: LoraSettings,
            settings: SFTSettings, out: Path, seed: int) -> SFTResult:
    import time

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = load_base(base_model, lora)
    args = SFTConfig(output_dir=str(out / "sft-work"), max_steps=settings.max_steps, learning_rate=settings.learning_rate,
                     per_device_train_batch_size=settings.batch_size, max_length=settings.max_length,
                     packing=settings.packing, assistant_only_loss=True, seed=seed, per_device_eval_batch_size=8,
                     **cpu_arguments())
    train = Dataset.from_list([{"messages": c["messages"]} for c in conversations])
    evaluation = Dataset.from_list([{"messages": c["messages"]} for c in held_out])
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=lora_config(lora))
    before = trainer.evaluate()["eval_loss"]
    counter = _TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    after = trainer.evaluate()["eval_loss"]
    adapter_dir = out / "sft-adapter"
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
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
