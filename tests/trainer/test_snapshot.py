"""The DPO mix of a default run: contrast pairs that teach a real model where refusing and escalating
are wrong, built from the seed's own answers, beside the seed preference pairs; and training prompts
grounded in the library as the chat's are, within their own budget."""

from __future__ import annotations

import pytest
from support import SEED_DIR, label

from careloop.seed import load_seed
from feedback import review_queue
from feedback.export import in_eval
from library.grounding import INSTRUCTION, SOURCES_NOTE
from trainer.config import TrainConfig
from trainer.data import answer_text, grounded_row, prompt_text, row_tokens
from trainer.measures import REFUSAL
from trainer.snapshot import PromptGrounding, build_snapshot, plain_refusal


def test_a_default_snapshot_gives_half_its_pairs_to_contrast_pairs_of_both_directions(tmp_path):
    data = build_snapshot(tmp_path / "snapshot", TrainConfig(), SEED_DIR, None).data
    pairs = data["dpo"]
    sources = [p["origin"] for p in pairs]
    assert len(pairs) == 96  # dpo.max_steps x batch_size
    assert [sources.count(f"contrast:{kind}") for kind in ("benign", "harmful", "triage")] == [16, 16, 16]

    qa = {e.messages[0].content: e.messages[1].content for e in load_seed(SEED_DIR, "sft") if len(e.messages) == 2}
    everyday = {e.messages[0].content: e.messages[1].content for e in load_seed(SEED_DIR, "everyday_sft")}
    benign = [p for p in pairs if p["origin"] == "contrast:benign"]
    for pair in benign:
        assert answer_text(pair["chosen"]) == (qa | everyday)[prompt_text(pair)]  # the question's own answer ...
        assert REFUSAL.search(answer_text(pair["rejected"]))  # ... preferred over a refusal
    assert sum(prompt_text(p) in everyday for p in benign) == len(benign) // 2  # half of them everyday questions

    refusals = {e.messages[0].content: e.messages[1].content for e in load_seed(SEED_DIR, "safety_sft")}
    for pair in (p for p in pairs if p["origin"] == "contrast:harmful"):
        # the request's own refusal ... over an answer
        assert answer_text(pair["chosen"]) == plain_refusal(refusals[prompt_text(pair)])
        assert REFUSAL.search(answer_text(pair["chosen"])) and answer_text(pair["rejected"]) in qa.values()

    triage = {e.messages[0].content: ("urgent" in e.id, e.messages[1].content)
              for e in load_seed(SEED_DIR, "triage_sft")}
    urgency_of_answer = {answer: urgent for urgent, answer in triage.values()}
    for pair in (p for p in pairs if p["origin"] == "contrast:triage"):
        urgent, answer = triage[prompt_text(pair)]
        assert answer_text(pair["chosen"]) == answer  # the vignette's own answer ...
        assert urgency_of_answer[answer_text(pair["rejected"])] is not urgent  # ... over one of the other kind
    assert {triage[prompt_text(p)][0] for p in pairs if p["origin"] == "contrast:triage"} == {True, False}

    evaluated = ({t["prompt"] for t in data["eval_triage"]} | {r["question"] for r in data["eval_reference"]}
                 | {s["prompt"] for s in data["eval_safety"]})
    assert not evaluated & {prompt_text(p) for p in pairs}  # nothing the evaluation asks is trained on


def test_refusals_are_trained_without_their_opening_apology(tmp_path):
    """SmolLM2 opens vague benign questions with "I'm sorry"; refusals that open the same way taught it to
    go on with "but I cannot assist" (BENCHMARKS.md): every trained refusal starts from what it refuses."""
    data = build_snapshot(tmp_path / "snapshot", TrainConfig(), SEED_DIR, None).data
    refusals = {e.messages[0].content: e.messages[1].content for e in load_seed(SEED_DIR, "safety_sft")}
    trained = [answer_text(r["messages"]) for r in data["sft"] if prompt_text(r) in refusals]
    trained += [answer_text(p["rejected"]) for p in data["dpo"] if p["origin"] == "contrast:benign"]
    assert len(trained) > 70 and not [t for t in trained if t.startswith("I'm sorry")]
    assert all(REFUSAL.search(t) for t in trained if t.startswith("I cannot")), (
        "still refusals, by the evaluation's measure")
    assert plain_refusal("I'm sorry, but providing false records is fraud.") == "Providing false records is fraud."
    assert plain_refusal("As an AI, I must clarify that ...") == "As an AI, I must clarify that ..."


def test_without_seed_pairs_there_are_no_contrast_pairs_either(tmp_path):
    config = TrainConfig.model_validate({"dpo": {"include_seed_pairs": False}})
    assert build_snapshot(tmp_path / "snapshot", config, SEED_DIR, None).data["dpo"] == []


def test_contrast_pairs_leave_the_rest_of_the_snapshot_as_it_was(tmp_path):
    with_contrast = build_snapshot(tmp_path / "a", TrainConfig(), SEED_DIR, None).data
    without = build_snapshot(tmp_path / "b", TrainConfig.model_validate({"dpo": {"contrast_share": 0}}), SEED_DIR,
                             None).data
    assert with_contrast["sft"] == without["sft"] and with_contrast["eval_pairs"] == without["eval_pairs"]
    seed_pairs = [p for p in with_contrast["dpo"] if not p["origin"].startswith("contrast:")]
    assert seed_pairs and all(p in without["dpo"] for p in seed_pairs)


GROUNDED = {"sft": {"max_examples": 40, "max_length": 256},
            "dpo": {"max_length": 256, "max_pairs": 8, "contrast_share": 0},
            "grounding": {"sft_share": 1.0, "passage_chars": 2000}}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_with_retrieval_on_training_prompts_carry_the_passages_the_answers_were_written_from(sessions, tiny_model_dir,
                                                                                           tmp_path):
    """A clinician's pair from a review item keeps exactly the item's passages, numbered as its answers
    cite them, cut so that the answer still fits max_length; seed QA questions get the passage found
    for them; with retrieval off every prompt is the bare question."""
    from transformers import AutoTokenizer

    from careloop.settings import get_settings
    from library.index import Passage, Retriever

    question = next(q for q in (f"How is stage {n} hypertension treated?" for n in range(50)) if not in_eval(q, 0.2))
    long_text = "Thiazide diuretics lower blood pressure. " * 80  # ~3,300 characters
    sources = [{"number": 1, "doc_id": "medquad-1", "title": "High blood pressure: treatment", "publisher": "NIH",
                "url": "", "text": long_text, "score": 1.0},
               {"number": 2, "doc_id": "doc-3", "title": "Ward notes", "publisher": "added by bot:ad.min (notes.md)",
                "url": "", "text": "Check the pressure twice.", "score": 0.8}]
    item = review_queue.add_item(sessions, question, "Start a thiazide [1], and check twice [2].", "Wait and see.",
                                 "med-v0002", "med-v0001", labels_needed=1, prompt_origin="student", passages=sources)
    label(sessions, item, "nurse.a", "a")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = TrainConfig.model_validate(GROUNDED)
    on = build_snapshot(tmp_path / "on", config, SEED_DIR, sessions,
                        PromptGrounding(Retriever(get_settings(), sessions), tokenizer)).data
    off = build_snapshot(tmp_path / "off", config, SEED_DIR, sessions, None).data

    (pair,) = [p for p in on["dpo"] if p["origin"] == "comparison"]
    prompt = prompt_text(pair)
    assert prompt.startswith(f"{SOURCES_NOTE}\n<sources>\n[1] High blood pressure: treatment (NIH): Thiazide")
    assert "\n\n[2] Ward notes (added by bot:ad.min (notes.md)): Check the pressure twice.\n</sources>\n\n" in prompt
    assert prompt.endswith(f"{INSTRUCTION}\n\nQuestion: {question}") and "passages" not in pair
    tokens = tokenizer.apply_chat_template(pair["prompt"] + pair["chosen"], tokenize=True,
                                           return_dict=True)["input_ids"]
    assert len(tokens) <= 256, "the row fits dpo.max_length, so TRL cuts nothing"
    assert tokenizer.decode(tokens).endswith("Start a thiazide [1], and check twice [2].<|im_end|>\n"), "answer whole"
    (bare,) = [p for p in off["dpo"] if p["origin"] == "comparison"]
    assert prompt_text(bare) == question and "passages" not in bare
    untrimmed = grounded_row(bare, [Passage(**source) for source in sources], 2000)
    assert row_tokens(untrimmed, tokenizer) > 256 and len(prompt) < len(long_text), "the long passage was cut"
    (taught,) = [r for r in on["sft"] if r["origin"] == "feedback"]  # the chosen answer, for SFT
    assert (prompt_text(taught).startswith(f"{SOURCES_NOTE}\n<sources>\n[1] High blood pressure")
            and "[2] Ward notes" in prompt_text(taught))

    seed_qa = {example.id for example in load_seed(SEED_DIR, "sft")}
    grounded_qa = [r for r in on["sft"]
                   if prompt_text(r).startswith(f"{SOURCES_NOTE}\n<sources>\n[1] ") and r["origin"] != "feedback"]
    assert grounded_qa and {r["origin"] for r in grounded_qa} <= seed_qa, "seed QA questions, not refusals or triage"
    assert all("\n\n[2] " not in prompt_text(r) and row_tokens(r, tokenizer) <= 256 for r in grounded_qa)
    assert [r["messages"][-1] for r in on["sft"]] == [r["messages"][-1] for r in off["sft"]], "only prompts change"
    assert not [r for name in ("sft", "dpo", "eval_pairs") for r in off[name] if "Sources:" in prompt_text(r)]
