"""The evaluation's answer cache (trainer.evaluate.Models): a version's answers are generated once per
decoding and questions and reused by later runs (its candidate answers become the next run's baseline),
and anything that changes the answers (the adapter's weights, the decoding, the questions) misses it."""

from __future__ import annotations

import json
import shutil

from careloop.decoding import Decoding
from trainer.evaluate import Models

SHORT = Decoding(temperature=0.3, top_p=0.9, repetition_penalty=1.1, max_tokens=6)
QUESTIONS = ["What is asthma?", "How is hypertension treated?", "What causes a cough?"]


def test_a_versions_answers_are_generated_once_and_a_change_misses(tiny_model_dir, adapter_dir, tmp_path):
    cache = tmp_path / "answers"
    copy = shutil.copytree(adapter_dir / "med-v0001", tmp_path / "published")  # as publishing copies it
    first = Models.load(str(tiny_model_dir), {"candidate": adapter_dir / "med-v0001"}, answer_cache=cache)
    answers = first.generate("candidate", QUESTIONS, SHORT)
    assert len(list(cache.glob("*.json"))) == 1
    # The next run loads the published copy as its baseline: the same weights, so the same answers, from the cache
    later = Models.load(str(tiny_model_dir), {"baseline": copy}, answer_cache=cache)
    (entry,) = cache.glob("*.json")
    entry.write_text(json.dumps(["from the cache"] * len(QUESTIONS)))  # proves where they came from
    assert later.generate("baseline", QUESTIONS, SHORT) == ["from the cache"] * len(QUESTIONS)
    entry.write_text(json.dumps(answers))
    # Other weights, another decoding, other questions, the base model: each generates (and is kept)
    other = Models.load(str(tiny_model_dir), {"baseline": adapter_dir / "med-v0002"}, answer_cache=cache)
    other.generate("baseline", QUESTIONS, SHORT)
    later.generate("baseline", QUESTIONS, Decoding(0.3, 0.9, 1.1, max_tokens=7))
    later.generate("baseline", QUESTIONS[:2], SHORT)
    later.generate("base", QUESTIONS, SHORT)
    assert len(list(cache.glob("*.json"))) == 5
    # A broken entry is generated again, not trusted
    entry.write_text("{not json")
    assert later.generate("baseline", QUESTIONS, SHORT) == answers
    # Without a cache nothing is kept
    assert Models.load(str(tiny_model_dir), {}).generate("base", QUESTIONS, SHORT)


def test_the_evaluation_reports_the_progress_units_it_promised(tiny_model_dir, adapter_dir, tmp_path):
    """The run's ETA times the evaluation's answers and scoring passes apart (trainer.schedule.step_pace):
    what ``evaluate`` reports of each kind must add up to what ``evaluation_units`` counted, with an
    adapter as the baseline (the base model's over-caution answers too) and with the base model as the
    baseline; answers read from the cache are reported as not timed."""
    from collections import Counter

    from support import SEED_DIR

    from trainer.evaluate import ANSWERS, BATCH_OVERHEAD, evaluation_units, generation_units
    from trainer.report import evaluation_report
    from trainer.snapshot import evaluation_data

    # a batch costs its answers plus a fixed part (decoding runs max_tokens steps for 4 answers or 48)
    assert generation_units(100, 48) == 100 + 3 * BATCH_OVERHEAD and generation_units(0, 48) == 0
    data = evaluation_data(SEED_DIR, None, 3, confirm_limit=4)
    against_live = {"candidate": adapter_dir / "med-v0001", "baseline": adapter_dir / "med-v0002"}
    against_base = {"candidate": adapter_dir / "med-v0001"}
    for adapters, names in ((against_live, ["candidate", "baseline"]), (against_base, ["candidate", "base"])):
        reported: Counter = Counter()
        untimed: Counter = Counter()

        def record(units: int, kind: str, timed: bool = True, reported=reported, untimed=untimed) -> None:
            reported[kind] += units
            untimed[kind] += 0 if timed else units

        models = Models.load(str(tiny_model_dir), adapters, answer_cache=tmp_path / "answers")
        models.batch = 3  # several batches per set, one of them short
        models.on_batch = record
        evaluation_report(models, data, SHORT, 0.9, run="units", snapshot="test", baseline="x", leakage="none")
        assert dict(reported) == evaluation_units(data, names, batch=models.batch), names
    assert untimed[ANSWERS] > 0, "the second evaluation read the base model's answers from the cache"
