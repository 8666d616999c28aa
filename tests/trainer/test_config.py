"""Bad training configs and gate policies stop `careloop train` with one clear message."""

import pytest

from trainer.config import ConfigError, TrainConfig
from trainer.gate import Policy


@pytest.mark.parametrize("text, message", [
    ("sft: {max_steps: 0}", "sft.max_steps: Input should be greater than or equal to 1"),
    ("dpo: {loss_type: magic}", "dpo.loss_type: Input should be 'sigmoid', 'ipo', 'hinge' or 'robust'"),
    ("lora: {rank: 8}", "lora.rank: Extra inputs are not permitted"),
    ("sft: {general_ratio: 1.0}", "sft.general_ratio: Input should be less than 1"),
    ("sft: [unclosed", "cannot read training config"),
])
def test_bad_training_configs(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="train.yaml") as error:
        TrainConfig.from_yaml(path)
    assert message in str(error.value)


def test_missing_files_and_bad_policies(tmp_path, cli):
    with pytest.raises(ConfigError, match="cannot read training config"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    policy = tmp_path / "policy.yaml"
    policy.write_text("confidence: 1.5\n")
    with pytest.raises(ConfigError, match="confidence: Input should be less than 1"):
        Policy.load(policy)
    assert Policy.load(None).preference_metric == "pair_accuracy"  # the shipped default parses
    bad = tmp_path / "train.yaml"
    bad.write_text("sft: {max_steps: -1}\n")
    done = cli("train", "--config", str(bad))
    assert done.returncode == 1 and "sft.max_steps" in done.stderr and "Traceback" not in done.stderr
