"""Retrieval benchmark: quality, added latency, build time and memory of the library's search.

    .venv/bin/python bench/retrieval.py [--questions 1000] [--seed 0] [--postgresql URL [--worst-case 16800]]
                                        [--rouge N [--model DIR]]
    .venv/bin/python bench/retrieval.py --patient [--split confirmation|tuning] [--tune]

``--patient``: patient-style questions (data/library/patient_questions.jsonl: lay words, symptoms
instead of names, misspellings; each labelled with the MedQuAD pages that answer it, or none),
asked of the configured library's bm25s index (CARELOOP_HOME's: built once with its embeddings,
minutes, then loaded), BM25 alone and hybrid side by side, with the configured thresholds:
Recall@3 (a page of a right topic among the first three sources, of the answerable questions) and
"nothing relevant" precision (of the questions given no source, the share that the library truly
does not answer) and recall (of those, the share given none). ``--tune`` (tuning split only):
the same for a grid of CARELOOP_RETRIEVAL_MIN_SIMILARITY and CARELOOP_RETRIEVAL_MIN_SCORE values.

Builds the whole shipped library's BM25 index (without embeddings: ``--patient`` measures those)
from scratch in a temporary data directory (as a fresh `careloop up` does), loads it back from disk
(as every later start does), then asks each of a fixed
sample of MedQuAD pages' own questions (each page's `question` field) and reports Recall@1/3/5 of
the page (URL) the question was written from, with the default relevance threshold applied. Latency is
the time a chat question waits for its passages: `Retriever.search` (the database check for
admins' changes, tokenizing, BM25, the relevance score), one question at a time.

``--postgresql URL`` (a PostgreSQL server's URL whose user may create databases, e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/postgres): the same questions, side by side, asked of
the PostgreSQL full-text backend in a scratch database created for the run and dropped after it:
its first load (COPY, tsvector, GIN), a later start's check that it is loaded, and the store's size.

``--worst-case N`` (with ``--postgresql``): the worst case of issue 31, 6, in a scratch database of its
own: the shipped library plus N passages of admins' documents of random words (added as an admin
adds them), and a question of 4,000 characters of random words. Asked of PostgreSQL with every word
used (no cap) and with the CARELOOP_RETRIEVAL_MAX_QUERY_TERMS rarest, alternately, with the ratio of
the medians; beside them a normal question, the per-question count of admins' passages that the
search did before migration 0014 (alone: the rest of that search is gone), and the bm25s index over
the same library, capped and not.

``--rouge N``: the base model (``--model``, default the configured one) answers the first N items
of each source of the held-out seed QA (data/seed/medqa_eval.jsonl: K-QA, MedQuAD) greedily, with
and without the chat's grounded prompt; ROUGE-L of each against the reference, the paired
difference with a 90% bootstrap interval, and the lexical citation-support rate. The library holds
the MedQuAD eval items' own pages (split "eval"), so that half is open-book; K-QA's are not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402

from careloop import db  # noqa: E402
from careloop.settings import load_settings  # noqa: E402
from library.corpus import medquad_records  # noqa: E402
from library.documents import add_documents  # noqa: E402
from library.index import Retriever, build_or_load  # noqa: E402
from library.passages import WORD, https_url  # noqa: E402

PATIENT_QUESTIONS = REPO_ROOT / "data" / "library" / "patient_questions.jsonl"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


@dataclass
class Figures:
    ranks: list[int | None]
    empty: int
    latencies: list[float]  # sorted
    cpu_times: list[float]  # sorted; this process's only (PostgreSQL's own work is in its server)
    server_cpu: float | None = None  # the PostgreSQL server's CPU time per question, on average

    def recall(self, k: int) -> float:
        return sum(rank is not None and rank <= k for rank in self.ranks) / len(self.ranks)

    def p(self, values: list[float], share: float) -> float:
        return values[int(share * len(values)) - 1] * 1000

    def report(self, name: str) -> None:
        print(f"{name}: Recall@1 {self.recall(1):.3f}  Recall@3 {self.recall(3):.3f}  Recall@5 {self.recall(5):.3f}  "
              f"(no passage over the threshold: {self.empty})")
        print(f"{name}: added latency per question (Retriever.search): p50 {self.p(self.latencies, 0.5):.1f} ms, "
              f"p95 {self.p(self.latencies, 0.95):.1f} ms, max {self.latencies[-1] * 1000:.1f} ms; this process's CPU "
              f"time p50 {self.p(self.cpu_times, 0.5):.1f} ms, p95 {self.p(self.cpu_times, 0.95):.1f} ms"
              + (f"; the PostgreSQL server's CPU time {self.server_cpu * 1000:.1f} ms a question on average"
                 if self.server_cpu is not None else ""))


def measure(retriever: Retriever, sample: list[dict], min_score: float,
            server_cpu: Callable[[], float | None] = lambda: None) -> Figures:
    ranks: list[int | None] = []
    empty = 0
    for record in sample:
        found = retriever.library().search(record["question"], 5, min_score)
        urls = [passage.url for passage in found]  # the page: sources are one per URL (issue 30, 2)
        page = https_url(record["url"])
        ranks.append(urls.index(page) + 1 if page in urls else None)
        empty += not found
    latencies, cpu_times = [], []  # CPU time too: wall time on a busy shared machine waits for a core
    server_started = server_cpu()
    for record in sample:
        started, cpu_started = time.perf_counter(), time.thread_time()
        retriever.search(record["question"])
        latencies.append(time.perf_counter() - started)
        cpu_times.append(time.thread_time() - cpu_started)
    server_ended = server_cpu()
    per_question = None if server_started is None or server_ended is None else (
        (server_ended - server_started) / len(sample))
    return Figures(ranks, empty, sorted(latencies), sorted(cpu_times), per_question)


def backend_cpu_seconds(sessions) -> float | None:
    """CPU time so far of the PostgreSQL server process behind the pool's one connection (searches
    one at a time reuse it), read from /proc: None for a server on another machine."""
    with sessions() as session:
        pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new, empty database on ``server_url``'s server, dropped afterwards."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"careloop_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def postgresql_figures(server_url: str, home: Path, sample: list[dict]) -> None:
    with scratch_database(server_url) as url:
        db.upgrade(url)
        settings = load_settings(home=home, database_url=url, retrieval_backend="postgresql",
                                 retrieval_dense=False)
        engine = db.make_engine(url)
        sessions = db.session_factory(engine)
        started = time.perf_counter()
        store = Retriever(settings, sessions).library()
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        retriever = Retriever(settings, sessions)  # a later start: the library is loaded already
        retriever.library()
        check_seconds = time.perf_counter() - started
        with sessions() as session:
            size = session.scalar(sa.text("SELECT pg_total_relation_size('library_passages')")) / 2**20
        print(f"postgresql: {len(store):,} passages; first load (COPY, tsvector, GIN index, ANALYZE): "
              f"{load_seconds:.1f} s; a later start's check: {check_seconds * 1000:.0f} ms; "
              f"table and indexes: {size:.0f} MiB")
        measure(retriever, sample, settings.retrieval_min_score, lambda: backend_cpu_seconds(sessions)).report(
            "postgresql")
        engine.dispose()


# What a search did first before migration 0014: count, for each of the question's lexemes, the
# admins' passages holding it (a filter over every one of them per lexeme). Timed alone, for comparison.
COUNTED_PER_QUESTION = sa.text("""
SELECT word.lexeme,
       (SELECT count(*) FROM library_passages AS p
        WHERE p.document_id IS NOT NULL AND p.search @@ plainto_tsquery('simple', word.lexeme)) AS found
FROM unnest(to_tsvector('careloop_english', :words)) AS word
""")


def random_words(words: list[str], chars: int, rng: random.Random) -> str:
    text = ""
    while len(text) < chars:
        text += rng.choice(words) + " "
    return text[:chars].strip()


def timed(run: Callable[[], object], server_cpu: Callable[[], float | None]) -> tuple[float, float | None]:
    """Wall seconds of ``run()``, and CPU seconds of the PostgreSQL server (None: not measurable) or of
    this thread (``server_cpu`` None)."""
    cpu_started = time.thread_time() if server_cpu is None else server_cpu()
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    cpu_ended = time.thread_time() if server_cpu is None else server_cpu()
    return wall, None if cpu_started is None or cpu_ended is None else cpu_ended - cpu_started


def side_by_side(name: str, runs: dict[str, Callable[[], object]], repeats: int,
                 server_cpu: Callable[[], float | None] | None) -> None:
    """Each of ``runs`` ``repeats`` times, in turns (a busy machine slows them alike): the median wall
    time and the mean CPU time (the server's is read in 10 ms ticks: a mean over the runs resolves a
    few ms); the first against the second as a ratio."""
    figures: dict[str, list[tuple[float, float | None]]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            figures[label].append(timed(run, server_cpu))
    cpu_name = "this process's CPU" if server_cpu is None else "the PostgreSQL server's CPU"
    medians = {}
    for label, measured in figures.items():
        wall = statistics.median(w for w, _ in measured)
        cpus = [c for _, c in measured if c is not None]
        cpu = statistics.mean(cpus) if cpus else None
        medians[label] = (wall, cpu)
        print(f"{name}: {label}: wall {wall * 1000:.1f} ms (median of {repeats})"
              + (f", {cpu_name} {cpu * 1000:.1f} ms (mean)" if cpu is not None else ""))
    (before, before_cpu), (after, after_cpu) = list(medians.values())[:2]
    print(f"{name}: ratio, {list(runs)[0]} / {list(runs)[1]}: wall {before / after:.1f}"
          + (f", CPU {before_cpu / max(after_cpu, 0.001):.1f}" if before_cpu is not None and after_cpu is not None
             else "") + " (CPU under 1 ms counted as 1 ms)")


def worst_case_figures(server_url: str, home: Path, admin_passages: int, seed: int, repeats: int = 10) -> None:
    """Issue 31, 6: a 4,000-character question of random words over the shipped library and
    ``admin_passages`` passages of admins' documents of random words."""
    with scratch_database(server_url) as url:
        db.upgrade(url)
        settings = load_settings(home=home / "worst-case", database_url=url, retrieval_backend="postgresql",
                                 retrieval_dense=False)
        engine = db.make_engine(url)
        sessions = db.session_factory(engine)
        store = Retriever(settings, sessions).library()
        rng = random.Random(seed)
        words = [word for record in medquad_records(settings.library_data_dir)
                 for word in WORD.findall(record["text"].lower())]
        documents = home / "worst-case-documents"
        documents.mkdir()
        paths, per_document = [], 1000
        for number in range(0, admin_passages, per_document):  # ~580 characters a paragraph: a passage each
            count = min(per_document, admin_passages - number)
            paragraphs = [random_words(words, 580, rng) + "." for _ in range(count)]
            paths.append(documents / f"notes-{number // per_document}.md")
            paths[-1].write_text(f"# Course notes {number // per_document}\n\n" + "\n\n".join(paragraphs))
        started = time.perf_counter()
        added = add_documents(sessions, paths, "bench", 10 * 2**20)
        add_seconds = time.perf_counter() - started
        question = random_words(words, 4000, rng)
        normal = "What are the symptoms of asthma?"
        cap, k, threshold = settings.retrieval_max_query_terms, settings.retrieval_top_k, settings.retrieval_min_score
        with sessions() as session:
            shipped = session.scalar(sa.text("SELECT passages FROM library_loads"))
        print(f"worst case: {sum(d.passages for d in added):,} passages of admins' documents of random words "
              f"({len(added)} documents, added in {add_seconds:.1f} s) beside {shipped:,} shipped; a question of "
              f"{len(question):,} characters of random words ({len(store.query_terms(question, 0))} distinct "
              f"lexemes); top-k {k}, threshold {threshold}")

        def counted_per_question() -> None:
            with sessions() as session:
                session.execute(COUNTED_PER_QUESTION, {"words": question}).all()

        def server_cpu() -> float | None:
            return backend_cpu_seconds(sessions)

        side_by_side("postgresql", {
            "the long question, every word used": lambda: store.search(question, k, threshold, max_terms=0),
            f"the long question, its {cap} rarest words": lambda: store.search(question, k, threshold, cap),
            f"a normal question ({normal!r})": lambda: store.search(normal, k, threshold, cap),
        }, repeats, server_cpu)
        side_by_side("postgresql", {
            "before migration 0014, the per-question count of admins' passages alone": counted_per_question,
            f"the whole search now, {cap} rarest words": lambda: store.search(question, k, threshold, cap),
        }, min(repeats, 3), server_cpu)

        bm25s_settings = load_settings(home=home / "worst-case", database_url=url, retrieval_backend="bm25s",
                                       retrieval_dense=False)
        started = time.perf_counter()
        library = Retriever(bm25s_settings, sessions).library()
        print(f"bm25s: the same library's index ({len(library):,} passages) built in "
              f"{time.perf_counter() - started:.1f} s")
        side_by_side("bm25s", {
            "the long question, every word used": lambda: library.search(question, k, threshold, max_terms=0),
            f"the long question, its {cap} rarest words": lambda: library.search(question, k, threshold, cap),
            f"a normal question ({normal!r})": lambda: library.search(normal, k, threshold, cap),
        }, repeats, None)
        engine.dispose()


@dataclass
class PatientFigures:
    recall_at_3: float
    answerable: int
    none_precision: float | None  # None: no question was given no source
    none_recall: float
    unanswerable: int
    empty: int
    latencies: list[float]  # sorted, seconds


def patient_figures(search: Callable[[str], list], questions: list[dict]) -> PatientFigures:
    hits = empty_right = empty = 0
    latencies = []
    for item in questions:
        started = time.perf_counter()
        found = search(item["question"])
        latencies.append(time.perf_counter() - started)
        right = {https_url(url) for url in item["urls"]}
        hits += bool(item["urls"]) and any(passage.url in right for passage in found[:3])
        empty += not found
        empty_right += not found and not item["urls"]
    answerable = sum(bool(item["urls"]) for item in questions)
    unanswerable = len(questions) - answerable
    return PatientFigures(hits / answerable, answerable, empty_right / empty if empty else None,
                          empty_right / unanswerable if unanswerable else 0.0, unanswerable, empty, sorted(latencies))


def patient_report(split: str, tune: bool) -> None:
    settings = load_settings(retrieval_backend="bm25s")
    db.upgrade(settings.resolved_database_url)
    sessions = db.sessions_for(settings.resolved_database_url)
    started = time.perf_counter()
    library = build_or_load(settings, sessions)
    questions = [row for row in map(json.loads, PATIENT_QUESTIONS.read_text().splitlines()) if row["split"] == split]
    print(f"library: {len(library):,} passages (index built or loaded in {time.perf_counter() - started:.0f} s); "
          f"{PATIENT_QUESTIONS.name}, {split} split: {sum(bool(q['urls']) for q in questions)} answerable, "
          f"{sum(not q['urls'] for q in questions)} not answered by the library; top 3")
    k, terms = 3, settings.retrieval_max_query_terms

    def line(name: str, figures: PatientFigures) -> None:
        precision = "n/a" if figures.none_precision is None else f"{figures.none_precision:.3f}"
        print(f"{name:<44} Recall@3 {figures.recall_at_3:.3f}  nothing-relevant precision {precision} "
              f"(of {figures.empty} given none)  recall {figures.none_recall:.3f}  latency p50 "
              f"{figures.latencies[len(figures.latencies) // 2] * 1000:.0f} ms, p95 "
              f"{figures.latencies[int(0.95 * len(figures.latencies)) - 1] * 1000:.0f} ms")

    if not tune:
        score, similarity = settings.retrieval_min_score, settings.retrieval_min_similarity
        line(f"BM25 alone (min score {score})",
             patient_figures(lambda q: library.search(q, k, score, terms), questions))
        line(f"hybrid (min score {score}, min similarity {similarity})",
             patient_figures(lambda q: library.search(q, k, score, terms, similarity), questions))
        return
    if split != "tuning":
        raise SystemExit("--tune chooses thresholds: on the tuning split only")
    for score in (0.7, 0.8, 0.9):
        line(f"BM25 alone (min score {score})",
             patient_figures(lambda q: library.search(q, k, score, terms), questions))
        for similarity in (0.3, 0.35, 0.375, 0.4, 0.425, 0.45, 0.5, 0.6):
            line(f"hybrid (min score {score}, min similarity {similarity})",
                 patient_figures(lambda q: library.search(q, k, score, terms, similarity), questions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=1000, help="pages whose question is asked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgresql", default="", help="PostgreSQL server URL: measure that backend too")
    parser.add_argument("--worst-case", type=int, default=0, metavar="PASSAGES",
                        help="with --postgresql: a 4,000-character question over this many admins' passages (0: skip)")
    parser.add_argument("--rouge", type=int, default=0, help="held-out seed QA items per source to answer (0: skip)")
    parser.add_argument("--model", default="", help="model directory for --rouge [default: the configured base model]")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--patient", action="store_true", help="patient-style questions: BM25 alone against hybrid")
    parser.add_argument("--split", choices=("confirmation", "tuning"), default="confirmation")
    parser.add_argument("--tune", action="store_true", help="with --patient --split tuning: a grid of thresholds")
    args = parser.parse_args()
    if args.patient:
        patient_report(args.split, args.tune)
        return

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home), retrieval_backend="bm25s", retrieval_dense=False)
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
        print(f"library: {len(records):,} MedQuAD pages, {len(retriever.library()):,} passages")
        print(f"questions: {len(sample)} (seed {args.seed}), threshold {settings.retrieval_min_score}, "
              f"top-k {settings.retrieval_top_k} in the chat")
        print(f"bm25s: index build: {build_seconds:.1f} s, +{built_rss:.0f} MiB resident after it, {disk:.0f} MiB on "
              f"disk; load from disk: {load_seconds:.2f} s")
        measure(retriever, sample, settings.retrieval_min_score).report("bm25s")
        if args.postgresql:
            postgresql_figures(args.postgresql, Path(home), sample)
            if args.worst_case:
                worst_case_figures(args.postgresql, Path(home), args.worst_case, args.seed)

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
    models = Models.load(model or resolve_base_model(settings).name_or_path, {})
    for source in ("K-QA", "MedQuAD"):  # the dataset, the first word of each item's provenance
        chosen = [{"question": i.question, "reference": i.reference} for i in items
                  if i.source.split(" ")[0] == source][:per_source]
        grounding = Grounding.find(retriever, chosen, settings.retrieval_passage_chars)
        plain = models.generate("base", [c["question"] for c in chosen], max_new_tokens)
        grounded = models.generate("base", [grounded_question(c["question"], p, grounding.passage_chars) if p
                                            else c["question"]
                                            for c, p in zip(chosen, grounding.passages, strict=True)],
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
