"""`careloop up`: the whole system on one machine, as supervised child processes.

Prepares what the parts need (data directory, migrations, the demo model when no base model is
set, an admin account), starts a local Redis with AOF when none answers at CARELOOP_REDIS_URL, then
serving, a worker per queue (feedback, generation, training), beat and the bot, each `python -m cli ...` in
its own process group with its log in `$CARELOOP_HOME/logs/`. It waits for each to be healthy,
prints the URL, restarts a child that dies (with backoff, logged), and on Ctrl-C or SIGTERM stops
them all, newest first. `careloop up --status` reads `$CARELOOP_HOME/up.json` and probes each part.

This module starts commands; it imports none of the four packages (the architecture test checks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from careloop.log import get_logger
from careloop.settings import Settings, redacted

log = get_logger(__name__)

STATE_FILE = "up.json"
WORKER_READY = "careloop worker ready"  # `careloop worker` prints it on stdout, whatever the log level
# One worker per queue: storing what a clinician submitted never waits behind a review fill (minutes
# of generation) or a training run (issue 29, 1: judgments reached the store 6-15 minutes late when
# ingest and generation shared one worker).
WORKERS = {"feedback-worker": "feedback", "generation-worker": "generation", "training-worker": "training"}
# Who gets the cores on one host (issue 29, 9): serving, the bot and storing feedback first; review
# generation after them; training last. A niced process still takes every idle cycle, so a run on a
# quiet machine is as fast as before, and a student waiting for an answer goes first on a busy one.
NICENESS = {"generation-worker": 5, "training-worker": 10}
HEALTH_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
MAX_BACKOFF = 30.0


class UpError(Exception):
    """Something `careloop up` cannot get past; the message says what to do."""


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    url: str = ""  # health is GET url answering 200; empty: a "ready" line in the log, or staying alive
    ready_line: str = ""
    nice: int = 0  # added to the child's niceness (NICENESS)
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    _log_offset: int = 0

    def start(self, env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        self.started_at = time.time()
        self.restart_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        if not self.alive():
            return False
        if self.url:
            return _answers(self.url)
        if self.ready_line:
            with self.log.open("rb") as out:
                out.seek(self._log_offset)
                return self.ready_line.encode() in out.read()
        return time.time() - self.started_at > 2.0

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass


@dataclass
class Supervisor:
    settings: Settings
    say: Callable[[str], None]
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    redis_started: bool = False  # whether the Redis in use is the one this supervisor started
    _stopping: bool = False

    # ----- preparing -----

    def _prepare_default_model(self) -> None:
        """Convert the default model in a child process: the supervisor stays small (the conversion
        holds ~1 GB that Python would not hand back)."""
        from careloop.base_model import default_model_dir
        from careloop.base_model.default import is_prepared, verified_gguf

        out = default_model_dir(self.settings)
        if is_prepared(out):
            self.say(f"base model: {out.name} (prepared at {out})")
            return
        verified_gguf()  # the one-line reason (missing wheel, hash mismatch) before starting anything
        self.say(f"base model: preparing {out.name} at {out} (once, about 20 s)")
        done = subprocess.run([sys.executable, "-m", "cli", "model", "prepare"], capture_output=True,
                              text=True, env={**os.environ, "CARELOOP_HOME": str(self.settings.home.resolve())})
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UpError(f"cannot prepare the default model: {reason.removeprefix('careloop: ')}")
        self.say(f"base model: {out.name} ready")

    def prepare(self) -> None:
        from careloop import accounts, db

        settings = self.settings
        home = settings.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        running = read_state(home)
        if running and _pid_alive(running.get("pid", 0)):
            raise UpError(f"careloop up is already running here (pid {running['pid']}); "
                          "`careloop up --status` shows it, Ctrl-C in its terminal stops it")
        db.upgrade(settings.resolved_database_url)
        self.say(f"database ready: {redacted(settings.resolved_database_url)}")
        if not settings.base_model and settings.serving_backend == "embedded":
            self._prepare_default_model()
        sessions = db.sessions_for(settings.resolved_database_url)
        if any(user.role == "admin" and not user.disabled for user in accounts.users(sessions)):
            self.say("admin account: exists (`careloop users list`)")
        else:
            password = settings.admin_password or accounts.new_password()
            accounts.add_user(sessions, "admin", "admin", password, actor="careloop up",
                              temporary=not settings.admin_password)
            shown = ("from CARELOOP_ADMIN_PASSWORD" if settings.admin_password
                     else f"{password}  (temporary, shown once: choose your own at the first sign-in)")
            self.say(f"admin account created: user admin, password {shown}")

        serving_url = settings.serving_url
        if settings.serving_backend == "embedded":
            serving_url = f"http://{client_host(settings.serving_host)}:{settings.serving_port}"
        # Serving and the training worker share the cores here: OpenMP threads spinning for a core
        # while the other process computes made an SFT 2.6x slower on 2 cores than waiting passively.
        self.env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "CARELOOP_HOME": str(home),
                    "CARELOOP_DATABASE_URL": settings.resolved_database_url,
                    "CARELOOP_SERVING_URL": serving_url, "PYTHONUNBUFFERED": "1"}
        self.children = self._plan(home, serving_url)

    def _plan(self, home: Path, serving_url: str) -> list[Child]:
        settings = self.settings
        logs = home / "logs"
        careloop = [sys.executable, "-m", "cli"]
        children = []
        redis_url = settings.redis_url
        if _redis_answers(redis_url):
            self.say(f"redis: using {redacted(redis_url)}")
        else:
            from careloop.redis_server import redis_server_args

            parsed = urlparse(redis_url)
            if parsed.scheme != "redis" or parsed.hostname not in ("127.0.0.1", "localhost"):
                raise UpError(f"Redis at {redacted(redis_url)} does not answer, and careloop up starts a local one "
                              "only for a redis://127.0.0.1 URL: start that Redis or change CARELOOP_REDIS_URL")
            port = parsed.port or 6379
            children.append(Child("redis", redis_server_args(home / "redis", port), logs / "redis.log",
                                  url=""))
            self.say(f"redis: none answered, starting a local one with AOF on port {port} (data in {home / 'redis'})")
        self.env["CARELOOP_REDIS_URL"] = redis_url
        self.redis_started = bool(children)
        if settings.serving_backend == "embedded":
            children.append(Child("serving", [*careloop, "serve"], logs / "serving.log", url=f"{serving_url}/health"))
        children += [Child(name, [*careloop, "worker", "--queues", queue], logs / f"{name}.log",
                           ready_line=WORKER_READY, nice=NICENESS.get(name, 0)) for name, queue in WORKERS.items()]
        children += [
            Child("beat", [*careloop, "beat"], logs / "beat.log"),
            Child("bot", [*careloop, "bot"], logs / "bot.log",
                  url=f"http://{client_host(settings.bot_host)}:{settings.bot_port}/"),
        ]
        return children

    # ----- running -----

    def start(self) -> None:
        for child in self.children:
            child.start(self.env)
            self._write_state()
            if child.name == "redis":
                self._wait_healthy([child], lambda: _redis_answers(self.env["CARELOOP_REDIS_URL"]))
        if self.settings.serving_backend != "embedded":
            self._wait_healthy([], lambda: _answers(f"{self.env['CARELOOP_SERVING_URL']}/health"))
        self._wait_healthy(self.children, lambda: all(c.healthy() for c in self.children if c.name != "redis"))
        for child in self.children:
            self.say(f"{child.name}: up (pid {child.process.pid}, log {child.log})")

    def _wait_healthy(self, children: list[Child], ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self._stopping:
                return
            for child in children:
                if not child.alive():
                    raise UpError(f"{child.name} exited with {child.process.returncode} while starting; "
                                  f"its log: {child.log}\n{_tail(child.log)}")
            if ready():
                return
            time.sleep(0.3)
        waiting = [c.name for c in children if not c.healthy()] or ["serving"]
        raise UpError(f"not healthy after {HEALTH_TIMEOUT:.0f} s: {', '.join(waiting)} "
                      f"(logs in {self.children[0].log.parent})")

    def supervise(self) -> None:
        """Until asked to stop: restart children that died, with backoff."""
        while not self._stopping:
            now = time.time()
            for child in self.children:
                if child.alive() or self._stopping:
                    continue
                if child.restart_at is None:
                    delay = min(2.0 ** child.restarts, MAX_BACKOFF)
                    child.restart_at = now + delay
                    log.warning("child_exited", child=child.name, code=child.process.returncode,
                                restart_in_seconds=delay)
                    self.say(f"{child.name} exited with {child.process.returncode}; restarting in {delay:.0f} s")
                elif now >= child.restart_at:
                    child.restarts += 1
                    child.start(self.env)
                    log.info("child_restarted", child=child.name, restarts=child.restarts, pid=child.process.pid)
                    self.say(f"{child.name} restarted (pid {child.process.pid}, restart {child.restarts})")
                    self._write_state()
            time.sleep(0.5)

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        """Stop every child, newest first: SIGTERM to its process group, SIGKILL after STOP_TIMEOUT."""
        self._stopping = True
        for child in reversed(self.children):
            child.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while child.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if child.alive():
                child.signal(signal.SIGKILL)
                child.process.wait(10)
            if child.process is not None:
                self.say(f"{child.name}: stopped")
        (self.settings.home / STATE_FILE).unlink(missing_ok=True)

    def _write_state(self) -> None:
        bot = next((c for c in self.children if c.name == "bot"), None)
        state = {"pid": os.getpid(), "started_at": time.time(), "bot_url": bot.url.rstrip("/") if bot else "",
                 "redis_url": redacted(self.env.get("CARELOOP_REDIS_URL", "")), "redis_started": self.redis_started,
                 "children": {c.name: {"pid": c.process.pid if c.process else None, "started_at": c.started_at,
                                       "restarts": c.restarts, "log": str(c.log), "url": c.url,
                                       "command": " ".join(c.args[1:])}
                              for c in self.children}}
        path = self.settings.home / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)


def run(settings: Settings, say: Callable[[str], None]) -> None:
    """`careloop up`: prepare, start, supervise until Ctrl-C / SIGTERM, stop."""
    supervisor = Supervisor(settings, say)
    supervisor.prepare()
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    try:
        supervisor.start()
        if not supervisor._stopping:
            bot = next(c for c in supervisor.children if c.name == "bot")
            say(f"careloop is up: open {bot.url} (Ctrl-C stops everything)")
            supervisor.supervise()
    finally:
        say("stopping...")
        supervisor.stop()


def read_state(home: Path) -> dict | None:
    path = home / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Status:
    """What a running `careloop up` runs: the web app's address, the Redis in use, each part."""
    pid: int
    bot_url: str
    redis_url: str
    redis_started: bool  # started by `careloop up` (else one that already answered)
    logs: Path
    parts: list[dict]


def status(settings: Settings) -> Status:
    """The parts of a running `careloop up`, each probed; raises UpError when none runs here."""
    state = read_state(settings.home)
    if not state or not _pid_alive(state.get("pid", 0)):
        raise UpError(f"careloop up is not running for CARELOOP_HOME={settings.home}")
    rows = []
    for name, child in state["children"].items():
        alive = bool(child["pid"]) and _pid_alive(child["pid"])
        healthy = alive and (_answers(child["url"]) if child["url"] else True)
        started = time.localtime(child["started_at"])
        since = time.strftime("%H:%M:%S" if started[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M", started)
        rows.append({"name": name, "pid": child["pid"], "state": "up" if healthy else ("starting" if alive else "down"),
                     "restarts": child["restarts"], "since": since, "log": Path(child["log"])})
    logs = rows[0]["log"].parent if rows else settings.home / "logs"
    return Status(state["pid"], state.get("bot_url", ""), state.get("redis_url", ""),
                  bool(state.get("redis_started")), logs, rows)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def client_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
