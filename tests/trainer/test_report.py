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
