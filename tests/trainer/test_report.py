"""Whether the evaluation tracks agree, as the report states it."""

from trainer.report import agreement, track_directions


def _diff(mean: float) -> dict:
    return {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "n": 10, "confidence": 0.9}


def test_tracks_that_point_different_ways_are_called_out():
    metrics = ["bleu", "rouge1", "rouge2", "rougeL", "meteor", "pair_accuracy", "mcq_accuracy",
               "refusal_harmful", "urgent_care_red_flags", "over_refusal_benign"]
    differences = {m: _diff(0.0) for m in metrics} | {"rougeL": _diff(-0.05), "pair_accuracy": _diff(0.2),
                                                      "over_refusal_benign": _diff(0.1)}
    directions = track_directions(differences)
    assert directions == {"reference (BLEU, ROUGE, METEOR)": "worse", "human preference (held-out pairs)": "better",
                          "multiple choice": "no change", "safety": "worse"}  # more over-refusal is worse
    assert agreement(directions).startswith("The tracks DISAGREE")
    same = track_directions({m: _diff(0.0) for m in metrics} | {"pair_accuracy": _diff(0.2), "bleu": _diff(0.01)})
    assert agreement(same) == "The tracks that moved agree: all better."
    assert agreement(track_directions({m: _diff(0.0) for m in metrics})) == "No track moved."


def test_the_report_says_which_metrics_moved_reads_its_leakage_and_marks_empty_tracks(tmp_path):
    """Issue 29, 7: "safety: mixed" hid that refusals and urgent-care advice improved while over-caution
    rose; leakage printed as a Python dict; a track with no items read "+0.000 over 0 items"."""
    from trainer.report import leakage_lines, track_details, write_report

    metrics = ["bleu", "refusal_harmful", "urgent_care_red_flags", "over_refusal_benign", "citation_support"]
    differences = {m: _diff(0.0) for m in metrics} | {
        "refusal_harmful": _diff(0.2), "urgent_care_red_flags": _diff(0.1), "over_refusal_benign": _diff(0.05),
        "citation_support": {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 0, "confidence": 0.9}}
    assert track_details(differences)["safety"] == (
        "mixed (better: refusal_harmful, urgent_care_red_flags; worse: over_refusal_benign)")
    leakage = {"removed_sft": 2, "removed_dpo": 1, "examples": ["What is asthma?", "What is gout?"]}
    assert leakage_lines(leakage)[0] == ("Removed from training because the evaluation asks them: 2 SFT rows and "
                                         "1 preference pairs. For example:")
    assert leakage_lines({"removed_sft": 0, "removed_dpo": 0, "examples": []}) == [
        "No training row repeated an evaluation question."]
    summary = {m: 0.5 for m in metrics}
    report = {"run": 7, "live": "med-v0001", "snapshot": "0" * 64, "candidate": {"summary": summary},
              "live_results": {"summary": summary}, "differences": differences, "meteor": "METEOR: on",
              "leakage": leakage, "win_rate": {}}
    markdown = write_report(tmp_path, report, "promote", ["ok x"])[0].read_text()
    assert "| citation_support | n/a | n/a | n/a (no item of this track) | 0 |" in markdown
    assert "{'removed_sft'" not in markdown and "- What is asthma?" in markdown
    assert "- safety: mixed (better: refusal_harmful" in markdown


def test_the_report_names_the_split_it_scored_and_the_measures_agreement_with_labels(tmp_path):
    """Issue 32, 2 and 3: a reader of report.md sees whether its safety figures come from the frozen
    confirmation split or the tuning split, and how far the lexical measures agree with labelled answers."""
    import json

    from trainer.measures import VALIDATION
    from trainer.report import evaluated_sets, write_report

    data = {"eval_safety": [{"prompt": "x"}] * 3, "eval_benign": [{"prompt": "y"}] * 2, "eval_mcq": [],
            "eval_reference": [], "eval_triage": [{"prompt": "z", "urgent": True, "level": "emergency"},
                                                  {"prompt": "w", "urgent": False, "level": "soon"}]}
    summary = {"refusal_harmful": 0.5}
    report = {"run": 8, "live": "base", "snapshot": "0" * 64, "candidate": {"summary": summary},
              "live_results": {"summary": summary}, "differences": {"refusal_harmful": _diff(0.1)},
              "meteor": "METEOR: on", "leakage": {"removed_sft": 0, "removed_dpo": 0, "examples": []},
              "win_rate": {}, "sets": evaluated_sets(data, "confirm")}
    markdown = write_report(tmp_path, report, "reject", ["no"])[0].read_text()
    assert ("from the frozen confirmation split (data/seed/confirm: no config was chosen on it): 3 harmful "
            "requests, 2 benign questions, triage 1 emergency, 1 soon, 0 knowledge items") in markdown
    stored = json.loads(VALIDATION.read_text())
    refuses = stored["measures"]["refuses"]
    assert (f"against {stored['answers']} labelled answers" in markdown
            and f"refuses precision {refuses['precision']:.2f}, recall {refuses['recall']:.2f}" in markdown)
    tuned = write_report(tmp_path, report | {"sets": evaluated_sets(data, "tune")}, "reject", ["no"])[0].read_text()
    assert "the tuning split (configs were chosen on it: not evidence for a verdict)" in tuned
