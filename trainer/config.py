"""The training configuration: one YAML file (``careloop train --config FILE``), validated.

Defaults follow the literature for LoRA (r=16, alpha=16) and DPO (beta=0.1, sigmoid loss). Step
counts and micro-batches are sized so that a default run on the offline default model
(SmolLM2-135M-Instruct) fits a 2-core CPU: export -> SFT -> DPO -> evaluation -> gate in at most
15 minutes with at most 4 GB of trainer memory (BENCHMARKS.md). On a GPU the micro-batch is the
whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TrainingDevice:
    gpu: bool
    bf16: bool

    @classmethod
    def detect(cls) -> TrainingDevice:
        """A GPU if there is one; bf16 where the hardware computes it natively (checked at run time:
        on a CPU without AVX512-BF16 or AMX, bf16 is emulated and slower than fp32)."""
        import torch

        if torch.cuda.is_available():
            return cls(gpu=True, bf16=torch.cuda.is_bf16_supported())
        return cls(gpu=False, bf16=cpu_has_bf16())


# bf16 pays off on a CPU only when matrix products dominate: measured ~1.35x faster per SFT step on the
# 135M-parameter default, 1.5x slower on the ~1M-parameter test model (conversion overhead).
BF16_MIN_PARAMETERS = 50_000_000


def use_bf16_on(device: TrainingDevice, model) -> bool:  # noqa: ANN001 - a torch module
    return device.bf16 and sum(p.numel() for p in model.parameters()) >= BF16_MIN_PARAMETERS


@cache
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


class _Batched(_Section):
    batch_size: int = Field(8, ge=1, description="examples per optimizer step")
    micro_batch_size: int | None = Field(
        None, ge=1, description="examples per forward pass (gradients accumulate up to batch_size); "
        "empty: the CPU default (memory), the whole batch on a GPU")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass (less memory, more compute); empty: the "
        "CPU default (DPO on, SFT off: DPO's peak sets the trainer's), off on a GPU")
    _cpu_micro_batch: ClassVar[int] = 2
    _cpu_checkpointing: ClassVar[bool] = False

    def checkpointing(self, device: TrainingDevice) -> bool:
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return self._cpu_checkpointing and not device.gpu

    def batch_shape(self, device: TrainingDevice) -> tuple[int, int]:
        """(micro-batch, gradient accumulation steps) for ``device``."""
        micro = self.micro_batch_size or (self.batch_size if device.gpu else self._cpu_micro_batch)
        micro = min(micro, self.batch_size)
        return micro, max(1, self.batch_size // micro)


class LoraSettings(_Section):
    r: int = Field(16, ge=1, le=512)
    alpha: int = Field(16, ge=1)
    # 0: PEFT's dropout copies every LoRA layer's input; without it SFT ran 1.46x the tokens/s in 0.84x
    # the memory on SmolLM2 on a CPU (bench/training_memory.py)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # QLoRA: train the adapter on a 4-bit (NF4, bitsandbytes) base. "auto": when a GPU is present.
    quantize: Literal["auto", "4bit", "none"] = "auto"

    def use_4bit(self) -> bool:
        if self.quantize == "auto":
            import torch

            return torch.cuda.is_available()
        return self.quantize == "4bit"


class SFTSettings(_Batched):
    # One packed sequence per forward pass on a CPU: 0.78x the peak of two at 1.09x the tokens/s on
    # SmolLM2 (bench/training_memory.py)
    _cpu_micro_batch: ClassVar[int] = 1
    max_steps: int = Field(32, ge=1)
    batch_size: int = Field(4, ge=1, description="examples (packed sequences) per optimizer step")
    learning_rate: float = Field(1e-3, gt=0)
    max_length: int = Field(256, ge=16)
    packing: bool = True  # best-fit packing: almost no compute spent on padding
    max_examples: int = Field(200, ge=1, description="seed conversations in the SFT set (clinicians' come on top)")
    safety_share: float = Field(0.35, ge=0, le=1, description="share of the seed set that is safety refusals")
    triage_share: float = Field(0.25, ge=0, le=1, description="share of the seed set that is triage answers")
    everyday_share: float = Field(0.15, ge=0, le=1, description="share of the seed set that is everyday health "
                                  "questions (medicines, self-care) answered helpfully")
    general_data: Path | None = Field(None, description="JSONL of general instruction chats (`messages`) to mix in")
    general_ratio: float = Field(0.0, ge=0, lt=1, description="share of the SFT mix drawn from general_data")


class DPOSettings(_Batched):
    max_steps: int = Field(24, ge=1)
    batch_size: int = Field(4, ge=1, description="pairs per optimizer step")
    learning_rate: float = Field(1e-3, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    # One pair (chosen + rejected, policy and reference) per forward pass on a CPU: two pairs peaked
    # at 4.9 GB on the default model, over the 4 GB budget.
    _cpu_micro_batch: ClassVar[int] = 1
    # Recomputing activations: DPO's peak 0.79x at 1.24x the seconds per step on SmolLM2 (bench/training_memory.py)
    _cpu_checkpointing: ClassVar[bool] = True
    max_length: int = Field(256, ge=16)
    precompute_ref_log_probs: bool = True
    max_pairs: int | None = Field(None, ge=1, description="pairs trained on, clinicians' first; empty: "
                                  "max_steps x batch_size (each pair seen once)")
    include_seed_pairs: bool = Field(True, description="train on the seed preference pairs, not only clinicians'")
    contrast_share: float = Field(0.5, ge=0, le=1, description="share of the pairs that teach where refusing and "
                                  "escalating are right and wrong (benign questions answered, harmful requests "
                                  "refused, triage matched to urgency)")


class GroundingSettings(_Section):
    """Library passages in training prompts, with CARELOOP_RETRIEVAL_ENABLED (``trainer.snapshot``):
    the chat's grounded prompt (``library.grounding``), so the adapter learns on the prompt it answers.

    A budget of its own, smaller than the chat's (3 passages of 600 characters, ~450 tokens): a
    training row is at most ``max_length`` tokens (256 by default on SmolLM2) with the question and
    the answer, and TRL cuts a longer row from its end, the answer first. One passage of 300
    characters and the instruction add ~90 tokens on SmolLM2; a row that has no room for them stays
    bare (the seed's QA answers are ~200 tokens: at the defaults 23 of the 80 seed QA examples are
    grounded, BENCHMARKS.md). Rows never exceed max_length, so DPO's time grows by at most the share
    of its pairs below it (SFT packs rows to max_length: its time does not change)."""

    sft_share: float = Field(1.0, ge=0, le=1, description="share of the seed QA examples offered the passage "
                             "retrieved for their question; those without a relevant passage or without room for "
                             "it, and the safety and triage examples, stay bare, so the adapter learns to use "
                             "sources and to answer without them")
    passages: int = Field(1, ge=1, le=10, description="passages retrieved for a grounded seed QA example "
                          "(clinicians' rows keep every passage their answers were written from)")
    passage_chars: int = Field(300, ge=60, description="longest passage text in a training prompt, cut at a sentence "
                               "end; shortened further where the row would not fit its trainer's max_length")


class EvalSettings(_Section):
    split: Literal["confirm", "tune"] = Field(
        "confirm", description="the seed sets the gate reports on: 'confirm', the frozen confirmation split (100 "
        "harmful requests, 100 benign questions, 60 triage vignettes at three levels, 100 PubMedQA items; "
        "data/seed/confirm), or 'tune', the sets configs may be chosen on (no gate verdict should rest on it)")
    max_items: int = Field(30, ge=1, description="reference QA items (and, on the tuning split, items per set)")
    confirm_items: int | None = Field(None, ge=1, description="items per confirmation set, the first N of each "
                                      "(the files are in stratified order); empty: every item")
    batch_size: int = Field(48, ge=1, le=256, description="answers generated at once: 48 took 0.71x the time of 16 "
                            "on 2 cores with SmolLM2-135M; lower it for a bigger model on little memory")
    # Pairs are scored by log-likelihood (no generation), so many are cheap, and the preference rule
    # needs them: with the seed's 23 pairs at a 10% hold-out its 90% interval was +-0.17 wide.
    max_pairs: int = Field(60, ge=1, description="held-out preference pairs scored")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of prompts held out (by prompt hash)")

    @model_validator(mode="before")
    @classmethod
    def _length_is_the_chats(cls, raw: object) -> object:
        if isinstance(raw, dict) and "max_new_tokens" in raw:
            raise ValueError("max_new_tokens is no longer set here: the evaluation decodes as the chat does, at "
                             "CARELOOP_ANSWER_MAX_TOKENS with the CARELOOP_DECODING_* settings (README, Decoding)")
        return raw


class TrainConfig(_Section):
    lora: LoraSettings = LoraSettings()
    sft: SFTSettings = SFTSettings()
    dpo: DPOSettings = DPOSettings()
    eval: EvalSettings = EvalSettings()
    grounding: GroundingSettings = GroundingSettings()
    gate_policy: Path | None = Field(None, description="YAML gate policy; default: trainer/default_policy.yaml")
    auto_promote: bool = False
    random_seed: int = 0

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
