"""Training configs: bad ones stop `careloop train` with one clear message; the CPU and GPU defaults."""

import pytest

from trainer.config import ConfigError, TrainConfig, TrainingDevice
from trainer.gate import Policy


@pytest.mark.parametrize("name, text, message", [
    ("train.yaml", "sft: {max_steps: 0}", "sft.max_steps: Input should be greater than or equal to 1"),
    ("train.yaml", "dpo: {loss_type: magic}", "dpo.loss_type: Input should be 'sigmoid', 'ipo', 'hinge' or 'robust'"),
    ("train.yaml", "lora: {rank: 8}", "lora.rank: Extra inputs are not permitted"),
    ("train.yaml", "sft: {general_ratio: 1.0}", "sft.general_ratio: Input should be less than 1"),
    ("train.yaml", "sft: [unclosed", "cannot read training config"),
    ("gate.yaml", "confidence: 1.5", "confidence: Input should be less than 1"),
    ("gate.yaml", "over_caution_tolerance: -0.1", "over_caution_tolerance: Input should be greater than or equal to 0"),
    # Issue 32, 5: a misspelled metric failed with a KeyError after ten minutes of training; it is refused
    # when the policy is read, as is an unknown field.
    ("gate.yaml", "preference_metric: pair_acuracy", "unknown preference metric 'pair_acuracy'"),
    ("gate.yaml", "reference_metrics: [rougeL, rouge_l]", "unknown reference metric(s) 'rouge_l'"),
    ("gate.yaml", "min_clinician_pairs: -1", "min_clinician_pairs: Input should be greater than or equal to 0"),
    ("gate.yaml", "min_clinicians: 10", "min_clinicians: Extra inputs are not permitted"),
])
def test_bad_training_configs_and_gate_policies(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=name) as error:
        (TrainConfig.from_yaml if name == "train.yaml" else Policy.load)(path)
    assert message in str(error.value)


def test_missing_files_and_bad_policies(tmp_path, cli):
    with pytest.raises(ConfigError, match="cannot read training config"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    assert Policy.load(None).preference_metric == "pair_accuracy"  # the shipped default parses
    bad = tmp_path / "train.yaml"
    bad.write_text("sft: {max_steps: -1}\n")
    done = cli("train", "--config", str(bad))
    assert done.returncode == 1 and "sft.max_steps" in done.stderr and "Traceback" not in done.stderr


def test_cpu_defaults_trade_time_for_memory_where_the_peak_is_and_gpus_keep_their_shape():
    """On a CPU one DPO pair per forward pass with activations recomputed (DPO's peak is the trainer's),
    one packed SFT sequence per pass without; on a GPU the whole batch, nothing recomputed; a set value wins."""
    cpu, gpu = TrainingDevice(gpu=False, bf16=True), TrainingDevice(gpu=True, bf16=True)
    config = TrainConfig()
    assert (config.sft.batch_shape(cpu), config.sft.checkpointing(cpu)) == ((1, 4), False)
    assert (config.dpo.batch_shape(cpu), config.dpo.checkpointing(cpu)) == ((1, 4), True)
    assert (config.dpo.batch_shape(gpu), config.dpo.checkpointing(gpu)) == ((4, 1), False)
    explicit = TrainConfig.model_validate({"sft": {"gradient_checkpointing": True},
                                           "dpo": {"gradient_checkpointing": False}})
    assert explicit.sft.checkpointing(gpu) and not explicit.dpo.checkpointing(cpu)
