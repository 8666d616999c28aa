"""QLoRA: SFT and DPO on a 4-bit NF4 base (bitsandbytes loads 4-bit on a CPU too), and the adapter
then serves on the full-precision base as any other."""

from __future__ import annotations

from careloop.decoding import Decoding
from careloop.settings import REPO_ROOT
from trainer.config import TrainConfig
from trainer.dpo import run_dpo
from trainer.evaluate import Models
from trainer.modeling import load_base
from trainer.sft import run_sft
from trainer.snapshot import build_snapshot

GREEDY_4 = Decoding(temperature=0, top_p=1, repetition_penalty=1, max_tokens=4)


def test_qlora_trains_an_adapter_that_loads_on_the_full_precision_base(tmp_path, tiny_model_dir):
    from bitsandbytes.nn import Linear4bit

    config = TrainConfig.model_validate({
        "lora": {"quantize": "4bit"},
        "sft": {"max_steps": 4, "max_examples": 40, "max_length": 128, "learning_rate": 0.005},
        "dpo": {"max_steps": 3, "max_pairs": 12, "max_length": 128, "contrast_share": 0, "micro_batch_size": 2},
        "eval": {"max_items": 4, "confirm_items": 4, "max_pairs": 4, "eval_fraction": 0.1}})
    assert isinstance(load_base(str(tiny_model_dir), config.lora).model.layers[0].self_attn.q_proj, Linear4bit)
    snapshot = build_snapshot(tmp_path / "snapshot", config, REPO_ROOT / "data" / "seed", None)
    held_out = [{"messages": [{"role": "user", "content": "What is asthma?"},
                              {"role": "assistant", "content": "A chronic disease of the airways."}]}]
    sft = run_sft(str(tiny_model_dir), snapshot.data["sft"], held_out, config.lora, config.sft, tmp_path, 0)
    dpo = run_dpo(str(tiny_model_dir), sft.adapter_dir, snapshot.data["dpo"], config.dpo, tmp_path, 0, config.lora)
    assert sft.train_loss > 0 and dpo.train_loss > 0
    # Loaded on the full-precision base, the adapter changes what the model says (a LoRA adapter
    # starts as a no-op: its B matrices are zero until training moves them).
    models = Models.load(str(tiny_model_dir), {"candidate": dpo.adapter_dir})
    rows = snapshot.data["sft"][:8]

    def likelihood(name: str) -> list[float]:
        return [models.completion_logprobs(name, row["messages"][0]["content"], [row["messages"][-1]["content"]],
                                           mean=True)[0] for row in rows]

    base, tuned = likelihood("base"), likelihood("candidate")
    assert sum(abs(b - t) for b, t in zip(base, tuned, strict=True)) / len(rows) > 1e-3, (base, tuned)
    assert len(models.generate("candidate", ["What is asthma?"], GREEDY_4)) == 1
