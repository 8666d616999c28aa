"""The model a training step trains and how TRL runs it on this machine, shared by SFT (``trainer.sft``)
and DPO (``trainer.dpo``): the base weights (4-bit NF4 for QLoRA, frozen bf16 on a CPU that gains
from it, else float32), the LoRA adapter's config, and the TRL arguments that go with that
precision. In one place so both steps load and run the base model the same way.
"""

from __future__ import annotations

from trainer.config import LoraSettings, TrainingDevice, use_bf16_on


def lora_config(settings: LoraSettings):  # noqa: ANN201 - peft.LoraConfig
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")


def load_base(base_model: str, lora: LoraSettings, device: TrainingDevice | None = None):  # noqa: ANN201
    """The base model to train an adapter on: 4-bit NF4 for QLoRA; on a CPU with bf16 units and a model
    big enough for it to pay (``use_bf16_on``), frozen bf16 weights (the LoRA weights and their optimizer
    stay float32: PEFT keeps adapters in float32), which measured as fast as bf16 autocast with ~0.4 GB
    less memory on the 135M model; else float32."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or TrainingDevice.detect()
    if not lora.use_4bit():
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype="float32")
        return model.to(torch.bfloat16) if not device.gpu and use_bf16_on(device, model) else model
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute))
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def device_arguments(device: TrainingDevice, gradient_checkpointing: bool = False, **overrides) -> dict:
    """TRL arguments for this machine: bf16 autocast on a GPU that has it (on a CPU the frozen weights are
    bf16 instead: ``load_base``), gradient checkpointing when the step's settings ask for it."""
    return {"use_cpu": not device.gpu, "bf16": device.bf16 and device.gpu,
            "gradient_checkpointing": gradient_checkpointing,
            "gradient_checkpointing_kwargs": {"use_reentrant": False} if gradient_checkpointing else None,
            "report_to": [],
            "save_strategy": "no", "logging_steps": 5, "disable_tqdm": True, **overrides}
