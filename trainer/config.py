"""The training configuration: one YAML file (``careloop train --config FILE``), validated.

Defaults follow the literature for LoRA (r=16, alpha=16) and DPO (beta=0.1, sigmoid loss);
step counts are small because the offline demo model trains on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Section):
    r: int = Field(16, ge=1, le=512)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # QLoRA: train the adapter on a 4-bit (NF4, bitsandbytes) base. "auto": when a GPU is present.
    quantize: Literal["auto", "4bit", "none"] = "auto"

    def use_4bit(self) -> bool:
        if self.quantize == "auto":
            import torch

            return torch.cuda.is_available()
        return self.quantize == "4bit"


class SFTSettings(_Section):
    max_steps: int = Field(60, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=16)
    packing: bool = True  # best-fit packing: almost no compute spent on padding
    max_examples: int | None = Field(None, ge=1, description="cap on training conversations (tests, quick runs)")
    general_data: Path | None = Field(None, description="JSONL of general instruction chats (`messages`) to mix in")
    general_ratio: float = Field(0.0, ge=0, lt=1, description="share of the SFT mix drawn from general_data")


class DPOSettings(_Section):
    max_steps: int = Field(40, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    max_length: int = Field(512, ge=16)
    precompute_ref_log_probs: bool = True
    max_pairs: int | None = Field(None, ge=1)
    include_seed_pairs: bool = Field(True, description="train on the seed preference pairs, not only clinicians'")


class EvalSettings(_Section):
    max_items: int = Field(40, ge=1, description="items per evaluation set")
    max_new_tokens: int = Field(64, ge=1)
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="share of prompts held out (by prompt hash)")


class TrainConfig(_Section):
    lora: LoraSettings = LoraSettings()
    sft: SFTSettings = SFTSettings()
    dpo: DPOSettings = DPOSettings()
    eval: EvalSettings = EvalSettings()
    gate_policy: Path | None = Field(None, description="YAML gate policy; default: trainer/default_policy.yaml")
    auto_promote: bool = False
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: Path | None) -> TrainConfig:
        if path is None:
            return cls()
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"invalid training config {path}: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


class ConfigError(Exception):
    """A config or policy file that cannot be used; the message names the file and the field."""
