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
