"""Retrieval benchmark: quality, added latency, build time and memory of the library's search.

    .venv/bin/python bench/retrieval.py [--questions 1000] [--seed 0] [--rouge N [--model DIR]]

Builds the whole shipped library's index from scratch in a temporary data directory (as a fresh
`careloop up` does), loads it back from disk (as every later start does), then asks each of a fixed
sample of MedQuAD pages' own questions (each page's `question` field) and reports Recall@1/3/5 of
the page the question was written from, with the default relevance threshold applied. Latency is
the time a chat question waits for its passages: `Retriever.search` (the database check for
admins' changes, tokenizing, BM25, the relevance score), one question at a time.

``--rouge N``: the base model (``--model``, default the configured one) answers the first N items
of each source of the held-out seed QA (data/seed/medqa_eval.jsonl: K-QA, MedQuAD) greedily, with
and without the chat's grounded prompt; ROUGE-L of each against the reference, the paired
difference with a 90% bootstrap interval, and the lexical citation-support rate. The library holds
the MedQuAD eval items' own pages (split "eval"), so that half is open-book; K-QA's are not in it.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from careloop import db  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from library.corpus import medquad_records  # noqa: E402
from library.index import Retriever, build_or_load  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=1000, help="pages whose question is asked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rouge", type=int, default=0, help="held-out seed QA items per source to answer (0: skip)")
    parser.add_argument("--model", default="", help="model directory for --rouge [default: the configured base model]")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home))
        db.upgrade(settings.resolved_database_url)
        sessions = db.sessions_for(settings.resolved_database_url)
        before = rss_mib()
        started = time.perf_counter()
        library = build_or_load(settings, sessions)
        build_seconds = time.perf_counter() - started
        built_rss = rss_mib() - before
        disk = sum(f.stat().st_size for f in (Path(home) / "library").rglob("*") if f.is_file()) / 2**20
        del library
        retriever = Retriever(settings, sessions)
        started = time.perf_counter()
        retriever.library()
        load_seconds = time.perf_counter() - started

        records = medquad_records(settings.library_data_dir)
        sample = random.Random(args.seed).sample(records, args.questions)
        ranks: list[int | None] = []
        empty = 0
        for record in sample:
            found = retriever.library().search(record["question"], 5, settings.retrieval_min_score)
            ids = [passage.doc_id for passage in found]
            ranks.append(ids.index(record["id"]) + 1 if record["id"] in ids else None)
            empty += not found
        chat_latencies, cpu_times = [], []  # CPU time too: wall time on a busy shared machine waits for a core
        for record in sample:
            started, cpu_started = time.perf_counter(), time.thread_time()
            retriever.search(record["question"])
            chat_latencies.append(time.perf_counter() - started)
            cpu_times.append(time.thread_time() - cpu_started)

    def recall(k: int) -> float:
        return sum(rank is not None and rank <= k for rank in ranks) / len(ranks)

    chat_latencies.sort()
    cpu_times.sort()
    print(f"library: {len(records):,} MedQuAD pages, {len(retriever.library().chunks):,} passages")
    print(f"index build: {build_seconds:.1f} s, +{built_rss:.0f} MiB resident after it, {disk:.0f} MiB on disk; "
          f"load from disk: {load_seconds:.2f} s")
    print(f"questions: {len(sample)} (seed {args.seed}), threshold {settings.retrieval_min_score}, "
          f"top-k {settings.retrieval_top_k} in the chat")
    print(f"Recall@1 {recall(1):.3f}  Recall@3 {recall(3):.3f}  Recall@5 {recall(5):.3f}  "
          f"(no passage over the threshold: {empty})")
    print(f"added latency per question (Retriever.search): p50 {statistics.median(chat_latencies) * 1000:.1f} ms, "
          f"p95 {chat_latencies[int(0.95 * len(chat_latencies)) - 1] * 1000:.1f} ms, "
          f"max {chat_latencies[-1] * 1000:.1f} ms; its CPU time p50 {statistics.median(cpu_times) * 1000:.1f} ms, "
          f"p95 {cpu_times[int(0.95 * len(cpu_times)) - 1] * 1000:.1f} ms")
    print(f"load average while it ran: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.rouge:
        rouge_with_and_without(retriever, settings, args.rouge, args.model, args.max_new_tokens)


def rouge_with_and_without(retriever: Retriever, settings, per_source: int, model: str, max_new_tokens: int) -> None:
    from careloop.base_model import resolve_base_model
    from careloop.seed import load_seed
    from library.grounding import citation_support, grounded_question
    from trainer.evaluate import Grounding, Models, paired_interval, reference_scores

    items = load_seed(settings.seed_data_dir, "eval")
    started = time.perf_counter()
    models = Models.load(model or resolve_base_model(settings).source, {})
    for source in ("K-QA", "MedQuAD"):  # the dataset, the first word of each item's provenance
        chosen = [{"question": i.question, "reference": i.reference} for i in items
                  if i.source.split(" ")[0] == source][:per_source]
        grounding = Grounding.find(retriever, chosen, settings.retrieval_passage_chars)
        plain = models.generate("base", [c["question"] for c in chosen], max_new_tokens)
        grounded = models.generate("base", [grounded_question(c["question"], p, grounding.passage_chars) if p
                                            else c["question"] for c, p in zip(chosen, grounding.passages, strict=True)],
                                   max_new_tokens)
        references = [c["reference"] for c in chosen]
        without, with_ = reference_scores(plain, references)["rougeL"], reference_scores(grounded, references)["rougeL"]
        effect = paired_interval(with_, without, 0.9)
        support = [citation_support(a, p) for a, p in zip(grounded, grounding.passages, strict=True)]
        cited = sum(s.cited for s in support)
        print(f"{source}: {len(chosen)} items, {sum(bool(p) for p in grounding.passages)} with passages; ROUGE-L "
              f"without {statistics.mean(without):.3f}, with {statistics.mean(with_):.3f}, with - without "
              f"{effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] (90%, paired); answers citing "
              f"[n]: {sum(s.cited > 0 for s in support)}; citation support (lexical) "
              + (f"{sum(s.supported for s in support) / cited:.2f} of {cited} cited sentences" if cited else "n/a"))
    print(f"generation: {time.perf_counter() - started:.0f} s, {max_new_tokens} new tokens, greedy")


if __name__ == "__main__":
    main()
