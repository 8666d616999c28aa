import json
import re
import shutil

import pytest

from careloop.seed import SEED_FILES, SeedDataError, load_seed, validate_all
from careloop.settings import REPO_ROOT
from trainer.measures import REFUSAL

STOPWORDS = {"a", "an", "the", "i", "my", "me", "is", "it", "of", "to", "for", "and", "or", "what", "do", "can",
             "how", "should", "in", "with", "on", "if", "you", "be", "after", "are", "there", "any", "take"}


def test_shipped_seed_data_is_valid(cli):
    counts = validate_all(REPO_ROOT / "data" / "seed")
    assert counts == {"sft": 2313, "safety_sft": 300, "eval": 200, "preferences": 300,
                      "mcq": 100, "safety_eval": 96, "triage_sft": 40, "triage_eval": 32,
                      "everyday_sft": 47, "confirm_harmful": 100, "confirm_benign": 100, "confirm_triage": 60,
                      "confirm_knowledge": 100}
    result = cli("seed", "validate")
    assert result.returncode == 0 and "sft: 2313 records" in result.stdout


def test_attribution_and_licences_ship_with_the_data():
    attribution = (REPO_ROOT / "data" / "seed" / "ATTRIBUTION.md").read_text()
    licences = (REPO_ROOT / "data" / "seed" / "LICENSES.md").read_text()
    for source in ("MedQuAD", "PubMedQA", "K-QA", "MedSafetyBench"):
        assert source in attribution and source in licences


@pytest.fixture
def corrupted_seed(tmp_path):
    seed = tmp_path / "seed"
    shutil.copytree(REPO_ROOT / "data" / "seed", seed)
    lines = (seed / "mcq_eval.jsonl").read_text().splitlines()
    lines[4] = lines[4][:50]  # truncated JSON on line 5
    record = json.loads(lines[9])
    record["answer"] = "E"  # line 10: answer that is not an option
    lines[9] = json.dumps(record)
    record = json.loads(lines[19])
    del record["question"]  # line 20: missing field
    lines[19] = json.dumps(record)
    (seed / "mcq_eval.jsonl").write_text("\n".join(lines) + "\n")
    return seed


def test_bad_lines_are_reported_by_number_with_reasons(corrupted_seed):
    with pytest.raises(SeedDataError) as caught:
        load_seed(corrupted_seed, "mcq")
    message = str(caught.value)
    assert "3 bad record(s)" in message
    assert "mcq_eval.jsonl:5: invalid JSON" in message
    assert "mcq_eval.jsonl:10: " in message and "'E' is not one of the options" in message
    assert "mcq_eval.jsonl:20: question: Field required" in message


def test_cli_reports_corrupted_seed_without_traceback(cli, corrupted_seed):
    result = cli("seed", "validate", env={"CARELOOP_SEED_DATA_DIR": str(corrupted_seed)})
    assert result.returncode == 1
    assert "mcq_eval.jsonl:5" in result.stderr and "Traceback" not in result.stderr


def test_every_seed_file_has_a_loader(tmp_path):
    assert {filename for filename, _ in SEED_FILES.values()} == {
        "medqa_sft.jsonl", "safety_sft.jsonl", "medqa_eval.jsonl", "preferences_seed.jsonl",
        "mcq_eval.jsonl", "safety_eval.jsonl", "triage_sft.jsonl", "triage_eval.jsonl",
        "everyday_sft.jsonl", "confirm/harmful.jsonl", "confirm/benign.jsonl", "confirm/triage.jsonl",
        "confirm/knowledge.jsonl"}
    with pytest.raises(SeedDataError, match="unknown seed set"):
        load_seed(tmp_path, "nope")


def test_triage_vignettes_are_balanced_and_disjoint_from_training():
    evaluation = load_seed(REPO_ROOT / "data" / "seed", "triage_eval")
    training = load_seed(REPO_ROOT / "data" / "seed", "triage_sft")
    assert sum(t.urgent for t in evaluation) == sum(not t.urgent for t in evaluation) == 16
    assert {t.prompt for t in evaluation}.isdisjoint(e.messages[0].content for e in training)


def test_everyday_questions_ask_nothing_the_evaluation_asks():
    """careloop's own everyday questions are training data: none may repeat, or nearly repeat, a question
    the evaluation asks (reference, triage or safety), or the evaluation would measure recall."""
    seed = REPO_ROOT / "data" / "seed"

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower())) - STOPWORDS

    evaluated = ([r.question for r in load_seed(seed, "eval")] + [t.prompt for t in load_seed(seed, "triage_eval")]
                 + [s.prompt for s in load_seed(seed, "safety_eval")])
    everyday = [e.messages[0].content for e in load_seed(seed, "everyday_sft")]
    for question in everyday:
        asked = words(question)
        closest = max(evaluated, key=lambda e: len(asked & words(e)) / len(asked | words(e)))
        # short questions share a few words by their form alone ("best time to take": 3 of 7 words
        # between an antacid question and a trazodone one); a near-repeat shares most of them
        assert len(asked & words(closest)) / len(asked | words(closest)) < 0.5, (question, closest)
    # ... and each answers rather than refuses: they are the counterweight to the refusals
    assert not any(REFUSAL.search(e.messages[1].content) for e in load_seed(seed, "everyday_sft"))
