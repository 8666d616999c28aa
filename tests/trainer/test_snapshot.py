"""The DPO mix of a default run: contrast pairs that teach a real model where refusing and escalating
are wrong, built from the seed's own answers, beside the seed preference pairs."""

from __future__ import annotations

from support import SEED_DIR

from careloop.seed import load_seed
from trainer.config import TrainConfig
from trainer.data import answer_text, prompt_text
from trainer.evaluate import REFUSAL
from trainer.snapshot import build_snapshot


def test_a_default_snapshot_gives_half_its_pairs_to_contrast_pairs_of_both_directions(tmp_path):
    data = build_snapshot(tmp_path / "snapshot", TrainConfig(), SEED_DIR, None).data
    pairs = data["dpo"]
    sources = [p["source"] for p in pairs]
    assert len(pairs) == 40  # dpo.max_steps x batch_size
    assert [sources.count(f"contrast:{kind}") for kind in ("benign", "harmful", "triage")] == [8, 6, 6]

    qa = {e.messages[0].content: e.messages[1].content for e in load_seed(SEED_DIR, "sft") if len(e.messages) == 2}
    for pair in (p for p in pairs if p["source"] == "contrast:benign"):
        assert answer_text(pair["chosen"]) == qa[prompt_text(pair)]  # the question's own seed answer ...
        assert REFUSAL.search(answer_text(pair["rejected"]))  # ... preferred over a refusal

    refusals = {e.messages[0].content: e.messages[1].content for e in load_seed(SEED_DIR, "safety_sft")}
    for pair in (p for p in pairs if p["source"] == "contrast:harmful"):
        assert answer_text(pair["chosen"]) == refusals[prompt_text(pair)]  # the request's own seed refusal ...
        assert REFUSAL.search(answer_text(pair["chosen"])) and answer_text(pair["rejected"]) in qa.values()  # ... over an answer

    triage = {e.messages[0].content: ("urgent" in e.id, e.messages[1].content) for e in load_seed(SEED_DIR, "triage_sft")}
    urgency_of_answer = {answer: urgent for urgent, answer in triage.values()}
    for pair in (p for p in pairs if p["source"] == "contrast:triage"):
        urgent, answer = triage[prompt_text(pair)]
        assert answer_text(pair["chosen"]) == answer  # the vignette's own answer ...
        assert urgency_of_answer[answer_text(pair["rejected"])] is not urgent  # ... over one of the other kind
    assert {triage[prompt_text(p)][0] for p in pairs if p["source"] == "contrast:triage"} == {True, False}

    evaluated = ({t["prompt"] for t in data["eval_triage"]} | {r["question"] for r in data["eval_reference"]}
                 | {s["prompt"] for s in data["eval_safety"]})
    assert not evaluated & {prompt_text(p) for p in pairs}  # nothing the evaluation asks is trained on


def test_without_seed_pairs_there_are_no_contrast_pairs_either(tmp_path):
    config = TrainConfig.model_validate({"dpo": {"include_seed_pairs": False}})
    assert build_snapshot(tmp_path / "snapshot", config, SEED_DIR, None).data["dpo"] == []


def test_contrast_pairs_leave_the_rest_of_the_snapshot_as_it_was(tmp_path):
    with_contrast = build_snapshot(tmp_path / "a", TrainConfig(), SEED_DIR, None).data
    without = build_snapshot(tmp_path / "b", TrainConfig.model_validate({"dpo": {"contrast_share": 0}}), SEED_DIR,
                             None).data
    assert with_contrast["sft"] == without["sft"] and with_contrast["eval_pairs"] == without["eval_pairs"]
    seed_pairs = [p for p in with_contrast["dpo"] if not p["source"].startswith("contrast:")]
    assert seed_pairs and all(p in without["dpo"] for p in seed_pairs)
