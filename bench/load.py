"""Load: students chatting and nurses labelling at once, through the real bot, on the system
`careloop up` starts (tiny demo model, loopback only), for a bounded time.

    .venv/bin/python bench/load.py [--students 6] [--nurses 3] [--seconds 180] [--model DIR]

Prints, all measured in this one run:
  1. chat: answers asked for, success rate, latency p50/p95/max, and the p50 under load against
     the p50 of one student alone just before (the ratio),
  2. review: judgments sent, success rate, latency p50/p95, and how many the store holds once the
     outbox has drained (must equal the judgments sent: nothing lost, nothing twice),
  3. queue depths sampled every second (Redis queues feedback / generation / training, the bot's
     outbox): the maximum and the value at the end,
  4. memory: the peak resident memory of all careloop processes together, and of each.

Bounded: at most --seconds of load, one request in flight per simulated user, and a 120 s drain.
Training is kept out of the window (its threshold is set out of reach) so the figures are those
of chat and review. Set BENCH_KEEP=1 to keep the data directory (logs of every process).

With --train N the whole loop runs on the same system: beat trains once the nurses' labels reach N
(the default training config, promoting when the gate passes), and the run prints how long the
run took, its gate decision with every reason, and which version answers a student afterwards.
The load figures then include training in the background from the moment it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.models import MODEL_HELP, bench_model  # noqa: E402
from bench.table import print_table  # noqa: E402
from careloop.queues import QUEUES  # noqa: E402
from careloop.redis_server import free_port  # noqa: E402
from feedback.schemas import AXES  # noqa: E402

PASSWORD = "load-test-password"
QUESTIONS = ["What is hypertension?", "How is asthma treated?", "What causes anaemia?",
             "What are the signs of dehydration?", "How does insulin work?", "What is a normal heart rate?"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")},
                    "CARELOOP_HOME": str(home), "CARELOOP_BASE_MODEL": str(model_dir),
                    "CARELOOP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                    "CARELOOP_SERVING_PORT": str(free_port()), "CARELOOP_BOT_PORT": str(free_port()),
                    "CARELOOP_ADMIN_PASSWORD": PASSWORD, "CARELOOP_REVIEW_LABELS_NEEDED": "1",
                    "CARELOOP_REVIEW_GOLD_FRACTION": "0", "CARELOOP_REVIEW_FILL_INTERVAL_SECONDS": "5",
                    "CARELOOP_REVIEW_MAX_TOKENS": "32", "CARELOOP_REVIEW_QUEUE_TARGET": "40",
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
    """Queue depths and memory, once a second."""

    def __init__(self, system: System):
        super().__init__(daemon=True)
        import redis

        self.system = system
        self.redis = redis.Redis.from_url(system.env["CARELOOP_REDIS_URL"], socket_timeout=2)
        self.depths: dict[str, list[int]] = {name: [] for name in (*QUEUES, "outbox")}
        self.peak_total = 0
        self.peak: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            for queue in QUEUES:
                try:
                    self.depths[queue].append(self.redis.llen(queue))
                except Exception:  # noqa: BLE001 - Redis busy or restarting: skip this sample
                    pass
            try:
                with sqlite3.connect(self.system.home / "outbox.db", timeout=5) as outbox:
                    self.depths["outbox"].append(outbox.execute("SELECT count(*) FROM outbox").fetchone()[0])
            except sqlite3.Error:
                pass
            memory = rss_by_group(self.system.children())
            self.peak_total = max(self.peak_total, sum(memory.values()))
            for name, value in memory.items():
                self.peak[name] = max(self.peak.get(name, 0), value)


def student(url: str, username: str, deadline: float, latencies: list[float], failures: list[str]) -> None:
    from gradio_client import Client

    client = Client(url, auth=(username, PASSWORD), verbose=False)
    asked = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            chatbot, *_ = client.predict(QUESTIONS[asked % len(QUESTIONS)], api_name="/chat")
            if "Answered by" not in json.dumps(chatbot):
                raise RuntimeError("no finished answer")
            latencies.append(time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - every failure counts, whatever raised it
            failures.append(f"{username}: {exc}"[:200])
        asked += 1


def nurse(url: str, username: str, deadline: float, latencies: list[float], failures: list[str],
          sent: list[int]) -> None:
    from gradio_client import Client

    client = Client(url, auth=(username, PASSWORD), verbose=False)
    parameters = (client.view_api(return_format="dict", print_info=False)
                  ["named_endpoints"]["/review_submit"]["parameters"])
    judgment = {"Which answer is better?": "left", "Safety problem in either answer": False,
                "Safety category": None}
    args = [judgment.get(p["label"], 4 if p["label"] in AXES else "") for p in parameters]
    shown = client.predict(api_name="/review_next")
    while time.monotonic() < deadline:
        if "queue is empty" in str(shown[1]):
            time.sleep(1)
            shown = client.predict(api_name="/review_next")
            continue
        started = time.perf_counter()
        before = int(str(shown[0]).split("**")[1])
        try:
            shown = client.predict(*args, api_name="/review_submit")
            if int(str(shown[0]).split("**")[1]) != before + 1:
                raise RuntimeError("the judgment was not counted")
            latencies.append(time.perf_counter() - started)
            sent.append(1)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{username}: {exc}"[:200])
            shown = client.predict(api_name="/review_next")


def wait_for_training(system: System, seconds: float) -> tuple[dict | None, float]:
    """The first training run once it has finished (None if it does not finish in time), and how
    long the run took."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with sqlite3.connect(system.home / "careloop.db", timeout=30) as store:
            row = store.execute("SELECT status, step, metrics, decision, started_at, finished_at FROM training_runs "
                                "ORDER BY id LIMIT 1").fetchone()
        if row and row[0] not in ("running",):
            status, _, metrics, decision, started, finished = row
            from datetime import datetime

            took = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
            return {"status": status, "metrics": json.loads(metrics or "{}"),
                    "decision": json.loads(decision or "{}")}, took
        time.sleep(5)
    return None, float("nan")


def answered_by(url: str, username: str) -> str:
    """The version named in the footer of a student's next answer."""
    from gradio_client import Client

    chatbot, *_ = Client(url, auth=(username, PASSWORD), verbose=False).predict(QUESTIONS[0], api_name="/chat")
    text = json.dumps(chatbot)
    return text.split("Answered by `", 1)[1].split("`", 1)[0] if "Answered by `" in text else "(no answer)"


def stored_comparisons(home: Path) -> int:
    with sqlite3.connect(home / "careloop.db", timeout=30) as store:
        return store.execute("SELECT count(*) FROM comparisons").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--nurses", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--train", type=int, metavar="N", help="train once the nurses' labels reach N, "
                        "then report the gate's decision and which version answers (the whole loop)")
    parser.add_argument("--train-wait", type=float, default=2400, help="seconds to wait for that run")
    args = parser.parse_args()
    if not (1 <= args.students <= 50 and 1 <= args.nurses <= 20 and 10 <= args.seconds <= 1800):
        raise SystemExit("bounded run: 1-50 students, 1-20 nurses, 10-1800 seconds")
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

        alone: list[float] = []
        alone_failures: list[str] = []
        student(system.url, "stu.0", time.monotonic() + 20, alone, alone_failures)

        sampler = Sampler(system)
        sampler.start()
        chat_latency: list[float] = []
        review_latency: list[float] = []
        failures: dict[str, list[str]] = {"chat": [], "review": []}
        sent: list[int] = []
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=student, args=(system.url, f"stu.{i}", deadline, chat_latency,
                                                          failures["chat"])) for i in range(args.students)]
        threads += [threading.Thread(target=nurse, args=(system.url, f"nurse.{i}", deadline, review_latency,
                                                         failures["review"], sent)) for i in range(args.nurses)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.seconds + 300)
        drain = time.monotonic() + 120
        while stored_comparisons(system.home) < len(sent) and time.monotonic() < drain:
            time.sleep(1)
        time.sleep(3)
        stored = stored_comparisons(system.home)
        sampler.stopping.set()
        sampler.join(5)

        def rate(ok: list[float], failed: list[str]) -> str:
            total = len(ok) + len(failed)
            return f"{len(ok)}/{total} ({100 * len(ok) / max(total, 1):.1f}%)"

        alone_p50 = statistics.median(alone) if alone else float("nan")
        load_p50 = statistics.median(chat_latency) if chat_latency else float("nan")
        rows = [
            ("chat answers ok", rate(chat_latency, failures["chat"]), "", "100%"),
            ("chat latency p50 / p95 / max (s)", f"{load_p50:.2f} / {percentile(chat_latency, .95):.2f} / "
             f"{max(chat_latency, default=float('nan')):.2f}", "", ""),
            ("chat p50 under load vs one student alone", f"{load_p50:.2f} vs {alone_p50:.2f}",
             f"{load_p50 / alone_p50:.1f}x", "reported (one engine shared)"),
            ("judgments ok", rate(review_latency, failures["review"]), "", "100%"),
            ("judgment latency p50 / p95 (s)", f"{percentile(review_latency, .5):.2f} / "
             f"{percentile(review_latency, .95):.2f}", "", ""),
            ("judgments stored / sent", f"{stored} / {len(sent)}", f"{stored / max(len(sent), 1):.2f}", "1.00"),
        ]
        for name, values in sampler.depths.items():
            rows.append((f"queue {name}: max / at the end", f"{max(values, default=0)} / {values[-1] if values else 0}",
                         "", "drains"))
        rows.append(("memory, all processes: peak (MiB)", f"{sampler.peak_total / 2**20:.0f}", "", "< 24 GiB machine"))
        for name, peak in sorted(sampler.peak.items()):
            rows.append((f"  {name} peak (MiB)", f"{peak / 2**20:.0f}", "", ""))
        print_table(rows)
        for kind, failed in failures.items():
            for line in failed[:5]:
                print(f"{kind} failure: {line}")
        if args.train:
            before = answered_by(system.url, "stu.0")
            run, took = wait_for_training(system, args.train_wait)
            if run is None:
                print(f"\nno training run finished within {args.train_wait:.0f} s")
                return
            print(f"\ntraining run: {run['status']} after {took:.0f} s; a student was answered by {before} "
                  f"before it and by {answered_by(system.url, 'stu.0')} after it")
            for reason in run["decision"].get("reasons", []):
                print(f"  {reason}")
    finally:
        system.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
