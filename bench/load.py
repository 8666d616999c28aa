"""The ward under load: students chatting, nurses labelling and an admin starting a training run, all at
once through the real bot, on the system `careloop up` starts (loopback only), for a bounded time.

    .venv/bin/python bench/load.py --students 4 --nurses 2 --seconds 600 --admin-run-at 240
    .venv/bin/python bench/load.py --model tiny --students 2 --nurses 2 --seconds 90 --admin-run-at 30

Model: SmolLM2-135M-Instruct, what `careloop up` prepares, unless --model says otherwise (`tiny`: the
tests' ~1M-parameter demo model, which measures HTTP and queue overhead, not inference; its context
is 512 tokens, so the bot refuses the questions the library finds passages for: grounded, they are
650-790 tokens, and only the others are answered).

Students ask one question after another (varied questions, three to a conversation, or one where the
model's context is as short as the tiny model's; at most the bot's 20 a minute per account), each
answer streamed through the bot's `/chat` API. Nurses take the next review item and judge it by what its
answers say: the one that uses more of the question's words (then the longer one) is better, equal ones
are a tie, two empty ones are both bad. With --admin-run-at S the `admin` account presses "Start a
training run" (Admin page, `/admin_train`) S seconds into the load; with --train N beat starts a run
once the nurses' labels reach N instead (the default config with `auto_promote: true`; the bench then
also says which version answers a student before and after it).

Prints the command line, then one table, all measured in this run:
  1. chat: answers ok, time to the first streamed token (TTFT) p50/p95, whole answer p50/p95/max, and
     the whole-answer p50 under load against one student alone just before (the ratio),
  2. review: judgments ok, submit p50/p95 (the bot's reply to Submit), judgment stored p50/p95 (from
     Submit to its row in the store's `comparisons`, polled every 0.25 s), judgments stored / sent once
     the outbox has drained, items shown and items shown again to a nurse who had judged them (must
     be 0), and the nurses' choices,
  3. queue depths sampled every second (Redis feedback / generation / training, the bot's outbox): the
     maximum and the value at the end of the load,
  4. with a run: its status, wall time (the training worker's start to the end; and from the admin's
     press), each step's seconds, and the clinician pairs it trained on (train + held out: its `data`)
     against the A/B judgments sent before it started (the bot had answered their Submit before the
     admin pressed, or, with --train, before the worker started the run). These must be equal: items
     need one label and none is gold, so each A/B judgment is one pair (a tie, or "both bad" without a
     correction, gives none; feedback.export). Then where a difference comes from: judgments sent
     before the start missing from its export, pairs from judgments sent after the start (stored before
     its snapshot), what the export dropped and the snapshot removed (leakage, caps), and what was
     still on its way to the store when the snapshot was taken, and how far the time left the Admin
     page showed (sampled every 15 s) was off over the run's second half (target: within 25%),
  5. memory: the peak resident memory of all careloop processes together (during the load, and up to
     the end of the run) and of each.

Bounded: at most --seconds of load, one request in flight per simulated user, a 120 s drain and at
most --train-wait seconds for the run after the load. Without a run, training is kept out (its
threshold is set out of reach). BENCH_KEEP=1 keeps the data directory (every process's log, the run's
snapshot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.table import print_table  # noqa: E402
from careloop.queues import QUEUES  # noqa: E402
from careloop.redis_server import free_port  # noqa: E402
from feedback.schemas import AXES  # noqa: E402

PASSWORD = "load-test-password"
ADMIN = "admin"  # the account `careloop up` creates, with CARELOOP_ADMIN_PASSWORD as its password
TOPICS = ["hypertension", "asthma", "anaemia", "dehydration", "type 2 diabetes", "migraine", "pneumonia", "eczema",
          "gout", "osteoporosis", "hypothyroidism", "a urinary tract infection", "atrial fibrillation", "psoriasis",
          "glaucoma", "tonsillitis", "heart failure", "kidney stones", "coeliac disease", "shingles",
          "vitamin B12 deficiency", "COPD", "hay fever", "otitis media", "cellulitis", "generalised anxiety"]
FORMS = ["What is {}?", "How is {} treated?", "What causes {}?", "What are the signs of {}?"]
QUESTIONS = [form.format(topic) for form in FORMS for topic in TOPICS]  # QUESTIONS[0]: "What is hypertension?"
TURNS_PER_CONVERSATION = 3  # one where the model's context is short (the tiny model's 512 tokens hold one)
SECONDS_BETWEEN_QUESTIONS = 60 / 20 + 0.1  # the bot's default CARELOOP_BOT_CHAT_PER_MINUTE is 20
STREAM_POLL_SECONDS = 0.05
STORE_POLL_SECONDS = 0.25
COMMON_WORDS = {"what", "how", "are", "the", "and", "for", "does", "which", "with", "signs", "causes", "treated",
                "who", "why", "when", "can", "this", "that", "from", "you", "your", "its", "is"}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p50_p95(values: list[float]) -> str:
    return f"{percentile(values, .5):.2f} / {percentile(values, .95):.2f}"


def _norm(markdown: str) -> str:
    """Text as compared between the page and the store: Markdown escapes and whitespace left out."""
    return " ".join(markdown.replace("\\", "").split())


def _moment(stored: str | None) -> float | None:
    """A time the store wrote (UTC, perhaps without its zone) as epoch seconds."""
    if not stored:
        return None
    moment = datetime.fromisoformat(stored)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class System:
    """`careloop up` in a private data directory, on free ports, stopped with SIGINT."""

    def __init__(self, home: Path, model_dir: Path, train_after: int | None = None):
        self.home = home
        training = {}
        if train_after:  # the default config, promoting when the gate passes
            config = home / "train.yaml"
            home.mkdir(parents=True, exist_ok=True)
            config.write_text("auto_promote: true\n")
            training = {"CARELOOP_TRAIN_MIN_NEW_PAIRS": str(train_after), "CARELOOP_TRAIN_CONFIG": str(config),
                        "CARELOOP_TRAIN_CHECK_INTERVAL_SECONDS": "10"}
        # One label per item and no gold items: each A/B judgment is one training pair (feedback.export).
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")},
                    "CARELOOP_HOME": str(home), "CARELOOP_BASE_MODEL": str(model_dir),
                    "CARELOOP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                    "CARELOOP_SERVING_PORT": str(free_port()), "CARELOOP_BOT_PORT": str(free_port()),
                    "CARELOOP_ADMIN_PASSWORD": PASSWORD, "CARELOOP_REVIEW_LABELS_NEEDED": "1",
                    "CARELOOP_REVIEW_GOLD_FRACTION": "0", "CARELOOP_REVIEW_FILL_INTERVAL_SECONDS": "5",
                    "CARELOOP_REVIEW_QUEUE_TARGET": "40",
                    "CARELOOP_TRAIN_MIN_NEW_PAIRS": "1000000", "CARELOOP_BOT_LOGIN_ATTEMPTS": "1000",
                    "CARELOOP_LOG_LEVEL": "WARNING", **training}
        self.output = home / "up.out"
        home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=self.env,
                                        stdout=self.output.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while "careloop is up" not in self.output.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"careloop up did not come up:\n{self.output.read_text()[-3000:]}")
            time.sleep(1)
        line = next(x for x in self.output.read_text().splitlines() if x.startswith("careloop is up"))
        self.url = line.split("open ")[1].split(" ")[0].rstrip("/")

    def cli(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, input=stdin, check=True,
                       capture_output=True, text=True, timeout=120)

    def children(self) -> dict[str, int]:
        state = json.loads((self.home / "up.json").read_text())
        return {name: child["pid"] for name, child in state["children"].items()}

    def store(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "careloop.db", timeout=30)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()


def rss_by_group(groups: dict[str, int]) -> dict[str, int]:
    """Resident bytes of every process in each child's process group (a worker's pool included)."""
    totals = dict.fromkeys(groups, 0)
    by_pgid = {pgid: name for name, pgid in groups.items()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgid = int(stat.rsplit(")", 1)[1].split()[2])
            if pgid in by_pgid:
                pages = int((entry / "statm").read_text().split()[1])
                totals[by_pgid[pgid]] += pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return totals


class Sampler(threading.Thread):
    """Queue depths and memory, once a second; ``mark`` notes the figures at the end of the load."""

    def __init__(self, system: System):
        super().__init__(daemon=True)
        import redis

        self.system = system
        self.redis = redis.Redis.from_url(system.env["CARELOOP_REDIS_URL"], socket_timeout=2)
        self.depths: dict[str, list[int]] = {name: [] for name in (*QUEUES, "outbox")}
        self.peak_total = 0
        self.peak: dict[str, int] = {}
        self.load_peak_total = 0
        self.load_depths: dict[str, list[int]] = {}
        self.stopping = threading.Event()

    def mark(self) -> None:
        self.load_peak_total = self.peak_total
        self.load_depths = {name: list(values) for name, values in self.depths.items()}

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            for queue in QUEUES:
                try:
                    self.depths[queue].append(self.redis.llen(queue))
                except Exception:  # noqa: BLE001 - Redis busy or restarting: skip this sample
                    pass
            try:
                with closing(sqlite3.connect(self.system.home / "outbox.db", timeout=5)) as outbox:
                    self.depths["outbox"].append(outbox.execute("SELECT count(*) FROM outbox").fetchone()[0])
            except sqlite3.Error:
                pass
            memory = rss_by_group(self.system.children())
            self.peak_total = max(self.peak_total, sum(memory.values()))
            for name, value in memory.items():
                self.peak[name] = max(self.peak.get(name, 0), value)


class EtaLog(threading.Thread):
    """The time left the Admin page shows for the first training run (``trainer.schedule.progress``),
    every ETA_POLL_SECONDS while it runs: issue 29, 7's target is within 25% over its second half."""

    def __init__(self, system: System):
        super().__init__(daemon=True)
        self.system = system
        self.samples: list[tuple[float, float]] = []  # (epoch seconds, seconds left it said)
        self.records: list[dict] = []  # each sample's step and progress record, kept beside the run's data
        self.stopping = threading.Event()

    def run(self) -> None:
        from careloop import db
        from trainer.runs import TrainingRun
        from trainer.schedule import progress

        sessions = db.session_factory(db.make_engine(f"sqlite:///{self.system.home / 'careloop.db'}"))
        while not self.stopping.wait(ETA_POLL_SECONDS):
            try:
                with sessions() as session:
                    run = session.query(TrainingRun).order_by(TrainingRun.id).first()
                if run is None or run.status != "running":
                    if run is not None:
                        return
                    continue
                left = progress(sessions, run).eta_seconds
            except Exception:  # noqa: BLE001 - the store busy or migrating: skip this sample
                continue
            if left is not None:
                self.samples.append((time.time(), left))
                self.records.append({"at": self.samples[-1][0], "left": left, "step": run.step,
                                     "progress": run.progress})
                (self.system.home / "eta-samples.json").write_text(json.dumps(self.records))

    def errors(self, began: float, ended: float) -> list[float]:
        """Each second-half sample's error: how far its end time was off, over the time then left."""
        half = began + (ended - began) / 2
        return [abs(at + left - ended) / (ended - at) for at, left in self.samples if half <= at < ended]


class Store(threading.Thread):
    """What the store holds, as the bench sees it: when each judgment's row first appears in
    `comparisons` (polled every STORE_POLL_SECONDS), and which review item a page shows."""

    def __init__(self, system: System):
        super().__init__(daemon=True)
        self.system = system
        self.seen: dict[tuple[int, str], float] = {}  # (item, annotator) -> monotonic time first seen
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str, str], list[int]] = {}  # (prompt, left, right) as shown -> item ids
        self._last_item = 0

    def run(self) -> None:
        last = 0
        with closing(self.system.store()) as store:
            while not self.stopping.wait(STORE_POLL_SECONDS):
                try:
                    rows = store.execute("SELECT id, review_item_id, annotator FROM comparisons WHERE id > ? "
                                         "ORDER BY id", (last,)).fetchall()
                except sqlite3.Error:  # busy, or not there yet: look again
                    continue
                now = time.monotonic()
                for row_id, item, annotator in rows:
                    self.seen.setdefault((item, annotator), now)
                    last = row_id

    def identify(self, annotator: str, shown: tuple) -> int | None:
        """The review item on a nurse's page (its prompt and two answers, in either order); where
        several items read the same, the one reserved for her last. None: no item reads like that."""
        key = (_norm(str(shown[1])).removeprefix("### Question").strip(), _norm(str(shown[3])), _norm(str(shown[4])))
        with self._lock, closing(self.system.store()) as store:
            if key not in self._items:
                for item, prompt, a, b in store.execute("SELECT id, prompt, response_a, response_b FROM review_items "
                                                        "WHERE id > ? ORDER BY id", (self._last_item,)):
                    for left, right in ((a, b), (b, a)) if a != b else ((a, b),):
                        self._items.setdefault((_norm(prompt), _norm(left), _norm(right)), []).append(item)
                    self._last_item = item
            items = self._items.get(key, [])
            if len(items) <= 1:
                return items[0] if items else None
            row = store.execute(f"SELECT item_id FROM review_assignments WHERE annotator = ? AND item_id IN "
                                f"({','.join('?' * len(items))}) ORDER BY assigned_at DESC, id DESC LIMIT 1",
                                (annotator, *items)).fetchone()
            return row[0] if row else None


@dataclass
class ChatLog:
    ttft: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)
    asked: list[float] = field(default_factory=list)  # epoch seconds each answered question was sent
    failures: list[str] = field(default_factory=list)

    def between(self, start: float, end: float) -> ChatLog:
        """The answers to questions sent from ``start`` to ``end`` (epoch seconds)."""
        kept = [i for i, at in enumerate(self.asked) if start <= at < end]
        return ChatLog([self.ttft[i] for i in kept], [self.whole[i] for i in kept], [self.asked[i] for i in kept])


@dataclass
class Judgment:
    nurse: str
    item: int | None
    choice: str  # as the page offers it: left, right, tie, both_bad
    sent: float  # monotonic: Submit pressed
    answered: float  # monotonic: the bot's reply


@dataclass
class ReviewLog:
    judgments: list[Judgment] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    shown: int = 0
    unidentified: int = 0
    again: list[tuple[str, int]] = field(default_factory=list)  # (nurse, item) shown after she judged it


def _last_answer(chatbot: object, before: int) -> tuple[str, bool]:
    """The text of the answer being written (without the cursor) and whether it has finished; empty
    while the page shows no new answer past the ``before`` messages it had."""
    if not isinstance(chatbot, list) or len(chatbot) <= before or not isinstance(chatbot[-1], dict):
        return "", False
    message = chatbot[-1]
    if message.get("role") != "assistant":
        return "", False
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = str(content or "")
    return text.replace("▌", "").strip(), "Answered by" in text


def turns_per_conversation(model_dir: Path) -> int:
    """Questions a student asks in one conversation: three, or one where the model's context is under
    2,048 tokens (a second question, with the library's passages and the first answer, would not fit)."""
    try:
        context = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 0)
    except (OSError, ValueError):
        return TURNS_PER_CONVERSATION
    return TURNS_PER_CONVERSATION if context >= 2048 else 1


def student(url: str, username: str, first: int, deadline: float, log: ChatLog, turns: int) -> None:
    from gradio_client import Client

    client = Client(url, auth=(username, PASSWORD), verbose=False)
    asked, before, fresh = 0, 0, False
    while time.monotonic() < deadline:
        paced = time.monotonic() + SECONDS_BETWEEN_QUESTIONS
        try:
            if fresh or (asked and asked % turns == 0):
                client.predict(api_name="/new_conversation")
                before, fresh = 0, False
            question = QUESTIONS[(first + asked) % len(QUESTIONS)]
            asked += 1
            started = time.perf_counter()
            first_token = None
            job = client.submit(question, api_name="/chat")
            while True:
                done = job.done()
                if first_token is None and any(isinstance(output, tuple | list) and _last_answer(output[0], before)[0]
                                               for output in job.outputs()):
                    first_token = time.perf_counter()
                if done:
                    break
                time.sleep(STREAM_POLL_SECONDS)
            chatbot, kept, *_ = job.result()
            took = time.perf_counter() - started
            _, finished = _last_answer(chatbot, before)
            before = len(chatbot) if isinstance(chatbot, list) else before
            if not finished:  # refused: the page keeps the question in its box and says why in a toast
                raise RuntimeError("refused (the question was kept)" if kept == question else "no finished answer")
            log.whole.append(took)
            log.ttft.append((first_token or time.perf_counter()) - started)
            log.asked.append(time.time() - took)
        except Exception as exc:  # noqa: BLE001 - every failure counts, whatever raised it
            log.failures.append(f"{username}: {exc}"[:200])
            fresh = True  # what the page holds is unknown now: the next question starts a conversation
        time.sleep(max(0.0, paced - time.monotonic()))


def choose(question: str, left: str, right: str) -> str:
    """A nurse's choice from what the answers say: more of the question's words in it, then longer
    (by 15 words, up to 120), is better; equal is a tie; two empty answers are both bad."""
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]{3,}", text.lower())

    asked = set(words(question)) - COMMON_WORDS

    def merit(answer: str) -> tuple[bool, int, int]:
        said = words(answer)
        return bool(said), len(asked & set(said)), min(len(said), 120) // 15

    a, b = merit(left), merit(right)
    if not a[0] and not b[0]:
        return "both_bad"
    return "left" if a > b else "right" if b > a else "tie"


def nurse(url: str, username: str, deadline: float, store: Store, log: ReviewLog) -> None:
    from gradio_client import Client

    client = Client(url, auth=(username, PASSWORD), verbose=False)
    parameters = (client.view_api(return_format="dict", print_info=False)
                  ["named_endpoints"]["/review_submit"]["parameters"])

    def judgment(choice: str) -> list:
        given = {"Which answer is better?": choice, "Safety problem in either answer": False, "Safety category": None}
        return [given.get(p["label"], 4 if p["label"] in AXES else "") for p in parameters]

    judged: set[int] = set()
    shown = client.predict(api_name="/review_next")
    while time.monotonic() < deadline:
        if "queue is empty" in str(shown[1]):
            time.sleep(1)
            shown = client.predict(api_name="/review_next")
            continue
        item = store.identify(username, shown)
        log.shown += 1
        log.unidentified += item is None
        if item is not None and item in judged:  # shown again after she judged it: counted, and passed
            log.again.append((username, item))
            shown = client.predict(api_name="/review_skip")
            continue
        choice = choose(str(shown[1]), str(shown[3]), str(shown[4]))
        started = time.monotonic()
        before = int(str(shown[0]).split("**")[1])
        try:
            shown = client.predict(*judgment(choice), api_name="/review_submit")
            if int(str(shown[0]).split("**")[1]) != before + 1:
                raise RuntimeError("the judgment was not counted")
            log.judgments.append(Judgment(username, item, choice, started, time.monotonic()))
            if item is not None:
                judged.add(item)
        except Exception as exc:  # noqa: BLE001
            log.failures.append(f"{username}: {exc}"[:200])
            shown = client.predict(api_name="/review_next")


def admin(url: str, at: float, pressed: dict) -> None:
    """The admin presses "Start a training run" on the Admin page at ``at`` (monotonic); signed in
    before, so the press is all that is timed."""
    from gradio_client import Client

    client = Client(url, auth=(ADMIN, PASSWORD), verbose=False)
    time.sleep(max(0.0, at - time.monotonic()))
    pressed["at"] = time.monotonic()
    try:
        table, note, *_ = client.predict(api_name="/admin_train")
        statuses = [row[1] for row in (table or {}).get("data", [])] if isinstance(table, dict) else []
        pressed["queued"] = any(status in ("queued", "running") for status in statuses)
        pressed["note"] = str(note)[:200]
    except Exception as exc:  # noqa: BLE001
        pressed["error"] = f"{exc}"[:200]
    pressed["answered"] = time.monotonic()


ETA_POLL_SECONDS = 15
RUN_COLUMNS = ("id", "status", "step", "data", "timings", "decision", "started_at", "finished_at", "error")


def wait_for_run(system: System, seconds: float) -> dict | None:
    """The first training run once it has finished, as stored; or as it stands when ``seconds`` end
    (None if there is none)."""
    deadline = time.monotonic() + seconds
    while True:
        with closing(system.store()) as store:
            row = store.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM training_runs ORDER BY id LIMIT 1").fetchone()
        run = dict(zip(RUN_COLUMNS, row, strict=True)) if row else None
        if (run and run["status"] != "running") or time.monotonic() > deadline:
            break
        time.sleep(5)
    if run:
        for name in ("data", "timings", "decision"):
            run[name] = json.loads(run[name] or "{}")
    return run


def answered_by(url: str, username: str) -> str:
    """The version named in the footer of a student's next answer."""
    from gradio_client import Client

    chatbot, *_ = Client(url, auth=(username, PASSWORD), verbose=False).predict(QUESTIONS[0], api_name="/chat")
    text = json.dumps(chatbot)
    return text.split("Answered by `", 1)[1].split("`", 1)[0] if "Answered by `" in text else "(no answer)"


def stored_comparisons(system: System) -> int:
    with closing(system.store()) as store:
        return store.execute("SELECT count(*) FROM comparisons").fetchone()[0]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_rows(system: System, run: dict, start: float, pressed: dict, review: ReviewLog,
             clock: float, eta: EtaLog) -> list[tuple[str, str, str, str]]:
    """The run's figures, and its clinician pairs against the judgments sent before ``start``
    (monotonic); ``clock``: epoch seconds minus monotonic seconds, to read the store's times."""
    rows = []
    began, ended = _moment(run["started_at"]), _moment(run["finished_at"])
    took = f"{ended - began:.0f} s" if began and ended else "not finished"
    rows.append((f"training run {run['id']} ({run['status']}): wall time, worker start to end", took, "", "reported"))
    if "at" in pressed and ended:
        rows.append(("  from the admin's press to its end", f"{ended - clock - pressed['at']:.0f} s", "", "reported"))
    if run["timings"]:
        rows.append(("  steps (s)", ", ".join(f"{step} {seconds:.0f}" for step, seconds in run["timings"].items()),
                     "", ""))
    if run["error"]:
        rows.append(("  error", run["error"][:100], "", ""))
    if began and ended:
        errors = eta.errors(began, ended)
        rows.append(("  time left as the Admin page said it: error over the run's second half, median / max",
                     f"{statistics.median(errors):.0%} / {max(errors):.0%} ({len(errors)} samples)" if errors
                     else "no sample", "", "within 25%"))

    before = [j for j in review.judgments if j.answered < start]
    ab = [j for j in before if j.choice in ("left", "right")]
    pairs = run["data"].get("pairs", {})
    trained = pairs.get("train", 0) + pairs.get("eval", 0)
    rows.append(("judgments sent before the run started: all (A/B, tie, both bad)",
                 f"{len(before)} ({len(ab)}, {sum(j.choice == 'tie' for j in before)}, "
                 f"{sum(j.choice == 'both_bad' for j in before)})", "", ""))
    if not run["data"]:
        rows.append(("clinician pairs the run trained on", "(no snapshot yet)", "", "= A/B judgments before"))
        return rows
    rows.append(("clinician pairs the run trained on (train + held out) vs A/B judgments sent before it",
                 f"{pairs.get('train', 0)} + {pairs.get('eval', 0)} = {trained} vs {len(ab)}",
                 f"{trained / max(len(ab), 1):.2f}", "equal (1.00)"))

    # Where a difference comes from: the snapshot's own export of the pairs, matched to the judgments.
    exported_dir = system.home / "runs" / str(run["id"]) / "snapshot" / "feedback" / "dpo"
    exported = Counter((row["prompt"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"])
                       for split in ("train", "eval") for row in _read_jsonl(exported_dir / f"{split}.jsonl")
                       if row.get("origin") == "comparison")
    with closing(system.store()) as store:
        stored = {(item, annotator): (prompt, a, b) if choice == "a" else (prompt, b, a)
                  for item, annotator, prompt, a, b, choice in store.execute(
                      "SELECT review_item_id, annotator, prompt, response_a, response_b, choice FROM comparisons "
                      "WHERE choice IN ('a', 'b')")}
    keys = [stored.get((j.item, j.nurse)) for j in ab]
    missing = sum(key is None for key in keys)  # not stored as an A/B judgment (or the item not identified)
    remaining = Counter(exported)
    found = 0
    for key in keys:
        if key is not None and remaining[key] > 0:
            remaining[key] -= 1
            found += 1
    rows.append(("  A/B judgments sent before it: in its export / stored as A/B / sent",
                 f"{found} / {len(ab) - missing} / {len(ab)}", "", "all"))
    rows.append(("  exported pairs from judgments sent after it started", f"{sum(remaining.values())}", "",
                 "reported (stored before its snapshot)"))
    manifest = json.loads((exported_dir / "manifest.json").read_text()) if (exported_dir / "manifest.json").exists() \
        else {}
    dropped = ", ".join(f"{reason} {n}" for reason, n in manifest.get("dropped", {}).items()) or "none"
    rows.append(("  judgments the export made no pair of", dropped, "", ""))
    snapshot = system.home / "runs" / str(run["id"]) / "snapshot" / "snapshot.json"
    leakage = json.loads(snapshot.read_text()).get("leakage", {}) if snapshot.exists() else {}
    rows.append(("  exported pairs not in the run (leaks removed, caps)",
                 f"{sum(exported.values()) - trained} ({leakage.get('removed_dpo', 0)} leaked pairs of all origins)",
                 "", "0"))
    late = run["data"].get("in_flight", {})
    rows.append(("  on its way to the store at its snapshot (outbox events, batches; waited)",
                 f"{late.get('outbox_events', 0)}, {late.get('queued_batches', 0)}; "
                 f"{late.get('waited_seconds', 0):.0f} s", "", ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--nurses", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--model", help=MODEL_HELP)
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--admin-run-at", type=float, metavar="S", help="the admin starts a training run S seconds "
                      "into the load (Admin page, Training runs: Start a training run)")
    runs.add_argument("--train", type=int, metavar="N", help="beat trains once the nurses' labels reach N, then "
                      "the bench reports the gate's decision and which version answers (the whole loop)")
    parser.add_argument("--train-wait", type=float, default=2400, help="seconds to wait for the run after the load")
    args = parser.parse_args()
    if not (1 <= args.students <= 50 and 1 <= args.nurses <= 20 and 10 <= args.seconds <= 1800):
        raise SystemExit("bounded run: 1-50 students, 1-20 nurses, 10-1800 seconds")
    if args.admin_run_at is not None and not 0 <= args.admin_run_at < args.seconds:
        raise SystemExit("--admin-run-at must fall within the load (0 to --seconds)")
    command = shlex.join([os.path.relpath(sys.executable, REPO_ROOT), os.path.relpath(__file__, REPO_ROOT),
                          *sys.argv[1:]])
    print(f"command: {command}", flush=True)
    model_dir = bench_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="careloop-load-"))
    system = System(work / "home", model_dir, args.train)
    try:
        for i in range(args.students):
            system.cli("users", "add", f"stu.{i}", "--role", "student", "--password-stdin", stdin=PASSWORD)
        for i in range(args.nurses):
            system.cli("users", "add", f"nurse.{i}", "--role", "nurse", "--password-stdin", stdin=PASSWORD)
        print(f"careloop up at {system.url}; {args.students} students and {args.nurses} nurses for "
              f"{args.seconds:.0f} s (model {model_dir.name})", flush=True)

        alone = ChatLog()
        turns = turns_per_conversation(model_dir)
        student(system.url, "stu.0", len(QUESTIONS) - 1, time.monotonic() + 20, alone, turns)

        sampler, store, eta = Sampler(system), Store(system), EtaLog(system)
        sampler.start()
        store.start()
        eta.start()
        chat, review, pressed = ChatLog(), ReviewLog(), {}
        began = time.monotonic()
        deadline = began + args.seconds
        threads = [threading.Thread(target=student, args=(system.url, f"stu.{i}", 11 * i, deadline, chat, turns))
                   for i in range(args.students)]
        threads += [threading.Thread(target=nurse, args=(system.url, f"nurse.{i}", deadline, store, review))
                    for i in range(args.nurses)]
        if args.admin_run_at is not None:
            threads.append(threading.Thread(target=admin, args=(system.url, began + args.admin_run_at, pressed)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.seconds + 300)
        drain = time.monotonic() + 120
        while stored_comparisons(system) < len(review.judgments) and time.monotonic() < drain:
            time.sleep(1)
        time.sleep(3)
        stored = stored_comparisons(system)
        sampler.mark()

        run, before_version = None, ""
        if args.train or args.admin_run_at is not None:
            if args.train:
                before_version = answered_by(system.url, "stu.0")
            # A press that failed started nothing: no waiting for a run then.
            run = wait_for_run(system, 0 if "error" in pressed else args.train_wait)
        store.stopping.set()
        sampler.stopping.set()
        eta.stopping.set()
        sampler.join(5)
        store.join(5)

        def rate(ok: list, failed: list[str]) -> str:
            total = len(ok) + len(failed)
            return f"{len(ok)}/{total} ({100 * len(ok) / max(total, 1):.1f}%)"

        alone_p50 = statistics.median(alone.whole) if alone.whole else float("nan")
        load_p50 = statistics.median(chat.whole) if chat.whole else float("nan")
        stored_after = [store.seen[(j.item, j.nurse)] - j.sent for j in review.judgments
                        if (j.item, j.nurse) in store.seen]
        choices = Counter(j.choice for j in review.judgments)
        rows = [
            ("chat answers ok", rate(chat.whole, chat.failures), "", "100%"),
            ("chat first token (TTFT) p50 / p95 (s)", p50_p95(chat.ttft), "", "reported"),
            ("chat whole answer p50 / p95 / max (s)",
             f"{p50_p95(chat.whole)} / {max(chat.whole, default=float('nan')):.2f}", "", "reported"),
            ("chat whole-answer p50 under load vs one student alone", f"{load_p50:.2f} vs {alone_p50:.2f}",
             f"{load_p50 / alone_p50:.1f}x", "reported (one engine shared)"),
            ("judgments ok", rate(review.judgments, review.failures), "", "100%"),
            ("judgment submit p50 / p95 (s)", p50_p95([j.answered - j.sent for j in review.judgments]), "", ""),
            ("judgment stored p50 / p95 (s, Submit to its row in the store)", p50_p95(stored_after), "",
             f"reported ({len(stored_after)} timed)"),
            ("judgments stored / sent (after the drain)", f"{stored} / {len(review.judgments)}",
             f"{stored / max(len(review.judgments), 1):.2f}", "1.00"),
            ("items shown to nurses / shown again after she judged it", f"{review.shown} / {len(review.again)}",
             "", "0 again"),
            ("  shown items not found in the store's review items", f"{review.unidentified}", "", "0"),
            ("nurses' choices: left / right / tie / both bad",
             " / ".join(str(choices[c]) for c in ("left", "right", "tie", "both_bad")), "", "not all left"),
        ]
        for name, values in sampler.load_depths.items():
            rows.append((f"queue {name}: max / at the end of the load",
                         f"{max(values, default=0)} / {values[-1] if values else 0}", "", "drains"))
        if args.admin_run_at is not None:
            said = pressed.get("error") or ("queued" if pressed.get("queued") else pressed.get("note", "no answer"))
            rows.append(("admin pressed Start a training run at (s into the load); the page said",
                         f"{pressed.get('at', float('nan')) - began:.0f}; {said}"[:90], "", "queued"))
        if run is None and (args.train or args.admin_run_at is not None):
            rows.append(("training run", f"none within {args.train_wait:.0f} s of the load's end", "", ""))
        elif run is not None:
            clock = time.time() - time.monotonic()
            start = pressed.get("at") or (_moment(run["started_at"]) or 0) - clock  # the press, or beat's start
            rows += run_rows(system, run, start, pressed, review, clock, eta)
            # Issue 29, 9: what a training run costs the students beside it, measured in this run
            began_run, ended_run = _moment(run["started_at"]), _moment(run["finished_at"]) or time.time()
            if began_run is not None:
                for label, part in (("before the run", chat.between(0, began_run)),
                                    ("while it ran", chat.between(began_run, ended_run))):
                    rows.append((f"chat TTFT p50 / p95, whole answer p50 (s), {label}",
                                 f"{p50_p95(part.ttft)}, {percentile(part.whole, .5):.2f} ({len(part.whole)} answers)",
                                 "", "reported"))
        rows.append(("memory, all processes: peak during the load (MiB)", f"{sampler.load_peak_total / 2**20:.0f}",
                     "", "< 24 GiB machine"))
        if run is not None:
            rows.append(("memory, all processes: peak up to the run's end (MiB)", f"{sampler.peak_total / 2**20:.0f}",
                         "", "< 24 GiB machine"))
        for name, peak in sorted(sampler.peak.items()):
            rows.append((f"  {name} peak (MiB)", f"{peak / 2**20:.0f}", "", ""))
        print(f"\ncommand: {command}")
        print_table(rows)
        for kind, failed in (("chat", chat.failures), ("review", review.failures)):
            for line in failed[:5]:
                print(f"{kind} failure: {line}")
        for name, item in review.again[:5]:
            print(f"shown again: item {item} to {name}")
        if run is not None:
            for reason in run["decision"].get("reasons", []):
                print(f"  gate: {reason}")
            if args.train and run["status"] != "running":
                print(f"a student was answered by {before_version} before the run and by "
                      f"{answered_by(system.url, 'stu.0')} after it")
    finally:
        system.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
