"""Grounded training rows: how many of a default run's rows get library passages, and how long they are.

    .venv/bin/python bench/grounded_rows.py [--model DIR] [--dpo-max-length N]

Builds a default run's snapshot (``TrainConfig()``, seed data, no feedback) twice, with retrieval off
and on, and measures its rows with the base model's tokenizer (``--model``, default the configured
one) as TRL renders them: how many seed QA examples find a relevant passage, how many have room for
it within ``sft.max_length``, and the SFT tokens either way (SFT packs rows into ``max_length``
sequences for a fixed number of steps, so its time does not depend on them). Then a clinician's pair
as review generation makes it: a seed question with the chat's passages (CARELOOP_RETRIEVAL_TOP_K
of CARELOOP_RETRIEVAL_PASSAGE_CHARS) and answers cut to N tokens, fitted to ``dpo.max_length``: does
any passage text stay? Last, the default DPO pairs' tokens (capped at ``dpo.max_length``, as TRL
cuts them) against every pair at ``max_length``, the most grounding can add to DPO's compute.
Set CARELOOP_LIBRARY_INDEX_DIR to reuse a built index (else it is built, about 10 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from careloop import db  # noqa: E402
from careloop.base_model import resolve_base_model  # noqa: E402
from careloop.seed import load_seed  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from library.index import Retriever  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import fit_grounded, preference_row, prompt_text, row_tokens  # noqa: E402
from trainer.snapshot import PromptGrounding, build_snapshot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model directory [default: the configured base model]")
    parser.add_argument("--dpo-max-length", type=int, default=0, help="dpo.max_length [default: TrainConfig's]")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home))
        db.upgrade(settings.resolved_database_url)
        sessions = db.sessions_for(settings.resolved_database_url)
        tokenizer = AutoTokenizer.from_pretrained(args.model or resolve_base_model(settings).name_or_path)
        retriever = Retriever(settings, sessions)
        config = TrainConfig.model_validate({"dpo": {"max_length": args.dpo_max_length}} if args.dpo_max_length else {})
        off = build_snapshot(Path(home) / "off", config, settings.seed_data_dir, None).data
        on = build_snapshot(Path(home) / "on", config, settings.seed_data_dir, None,
                            PromptGrounding(retriever, tokenizer)).data

        qa_ids = {example.id for example in load_seed(settings.seed_data_dir, "sft")}
        qa = [row for row in off["sft"] if row["origin"] in qa_ids]
        found = [row for row in qa if retriever.search(prompt_text(row), config.grounding.passages)]
        grounded = [row for row in on["sft"] if prompt_text(row).startswith("Sources:")]
        print(f"SFT: {len(on['sft'])} rows, {len(qa)} seed QA; a relevant passage for {len(found)}; grounded "
              f"(room within {config.sft.max_length} tokens) {len(grounded)}")
        print("  bare tokens of the QA rows with a passage: median "
              f"{statistics.median(row_tokens(r, tokenizer) for r in found):.0f}; "
              f"grounded rows: median {statistics.median(row_tokens(r, tokenizer) for r in grounded):.0f}, "
              f"max {max(row_tokens(r, tokenizer) for r in grounded)}")
        print(f"  SFT tokens in all: off {sum(row_tokens(r, tokenizer) for r in off['sft']):,}, "
              f"on {sum(row_tokens(r, tokenizer) for r in on['sft']):,}")

        for answer_tokens in (50, 100, 150, 200):
            kept = tried = 0
            for row in found[:40]:
                ids = tokenizer(row["messages"][-1]["content"], add_special_tokens=False)["input_ids"][:answer_tokens]
                answer = tokenizer.decode(ids)
                pair = preference_row(prompt_text(row), answer, answer)
                fitted = fit_grounded(pair, retriever.search(prompt_text(row)), settings.retrieval_passage_chars,
                                      tokenizer, config.dpo.max_length)
                tried += 1
                kept += prompt_text(fitted).startswith("Sources:")
            print(f"DPO pair with the chat's passages, answers of {answer_tokens} tokens: passages kept in "
                  f"{kept} of {tried}")
        capped = [min(config.dpo.max_length, row_tokens(pair, tokenizer)) for pair in off["dpo"]]
        print(f"DPO: {len(capped)} default pairs, {sum(capped):,} tokens (median {statistics.median(capped):.0f}, "
              f"{sum(c == config.dpo.max_length for c in capped)} at max_length); every pair at max_length: "
              f"{len(capped) * config.dpo.max_length:,} (x{len(capped) * config.dpo.max_length / sum(capped):.2f})")


if __name__ == "__main__":
    main()
