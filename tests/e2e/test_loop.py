"""The whole loop on the system `careloop up` starts (tiny model, small thresholds), driven through
the browser: a student asks; beat fills the review queue; two nurses label with the keyboard while
the feedback worker and then Redis are SIGKILLed (`careloop up` restarts them) and nothing is lost
or stored twice; beat trains; the gate promotes; the student's next answer comes from the new
version, also after serving is SIGKILLed and restarted; the admin sees the run and its report and
rolls back; the base model answers again;
`--status` tells what runs; Ctrl-C stops every child. Along the way: every process listens on
127.0.0.1 only, the bot SIGKILLed right after the last judgments loses none of them, and no log
holds a password or what a student wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_browser import ask, judge_with_keys, open_browser, open_review, shot, sign_in
from processes import careloop_env, wait_for
from sqlalchemy import func, select

from adapters.registry import AdapterVersion
from careloop import db
from careloop.redis_server import free_port
from feedback.store import Comparison, DeadLetter, ReviewItem
from trainer.runs import TrainingRun

PASSWORD = "correct-horse-battery"
ADMIN_PASSWORD = "admin-horse-battery"
# Mechanics on the tiny model: seed pairs only and two pairs per forward pass (the defaults add
# contrast pairs and one pair per pass for the real model's sake; the outcomes here were tuned without).
QUICK = {"sft": {"max_steps": 20, "batch_size": 8, "max_examples": 300, "learning_rate": 0.003, "max_length": 256},
         "dpo": {"max_steps": 20, "batch_size": 8, "learning_rate": 0.002, "max_length": 256, "max_pairs": 200,
                 "contrast_share": 0, "micro_batch_size": 2},
         "eval": {"max_items": 40, "confirm_items": 40, "max_pairs": 40, "eval_fraction": 0.2}, "auto_promote": True,
         # Seed questions bare, as the outcomes were tuned (grounded prompts: tests/trainer/test_snapshot.py).
         "grounding": {"sft_share": 0}}
# The default gate but for its preference rule. On the tiny model DPO moves held-out pair accuracy by
# about +0.1 with a 90% interval that straddles zero from run to run (+0.125 [+0.000, +0.250] and
# +0.071 [-0.036, +0.179] at 60-80 steps: the nurses' pairs reshuffle the data), so the default rule
# made this test a coin toss. What is checked here is the loop around the gate; the gate's rules are
# checked on constructed differences (tests/trainer/test_gate.py) and on real runs
# (tests/trainer/test_pipeline.py: good data promoted, inverted preferences rejected).
# Seed pairs may decide (min_clinician_pairs 0): four nurses' judgments are far below the 40 held-out
# clinicians' pairs the default policy asks for before it calls preference at all.
LOOP_GATE = {"min_gain": -1.0, "min_clinician_pairs": 0}
PATIENT, PATIENT_EMAIL = "Jane Roe", "jane.roe@example.org"
# nurse.a judges 3 (one a tie), nurse.b 2: four preferences = CARELOOP_TRAIN_MIN_NEW_PAIRS.
JUDGMENTS = {"nurse.a": ["1", "1", "3"], "nurse.b": ["1", "2"]}


@pytest.fixture
def system(tmp_path, tiny_model_dir, library_index_dir):
    """`careloop up` on fresh ports and a fresh data directory; stopped with SIGINT (Ctrl-C)."""
    policy = tmp_path / "gate.yaml"
    policy.write_text(yaml.safe_dump(LOOP_GATE))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**QUICK, "gate_policy": str(policy)}))
    home = tmp_path / "home"
    env = careloop_env(home, base_model=str(tiny_model_dir), redis_url=f"redis://127.0.0.1:{free_port()}/0",
                       serving_port=str(free_port()), bot_port=str(free_port()), admin_password=ADMIN_PASSWORD,
                       review_fill_interval_seconds="2", review_batch_size="4", review_labels_needed="1",
                       review_gold_fraction="0", answer_max_tokens="24", review_queue_target="8",
                       train_min_new_pairs="4", train_check_interval_seconds="2", train_config=str(config),
                       celery_visibility_timeout="10", feedback_resend_seconds="10", promotion_grace_seconds="1",
                       # grounded, within the tiny model's 512-token context
                       retrieval_top_k="2", retrieval_passage_chars="150", library_index_dir=str(library_index_dir))
    output = tmp_path / "up.out"
    process = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, stdout=output.open("w"),
                               stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "careloop is up" in output.read_text() or process.poll() is not None, timeout=300,
                 message="careloop up to say it is up")
        assert process.poll() is None, output.read_text()[-3000:]
        line = next(x for x in output.read_text().splitlines() if x.startswith("careloop is up"))
        url = line.split("open ")[1].split(" ")[0].rstrip("/")
        sessions = db.sessions_for(f"sqlite:///{home / 'careloop.db'}")
        yield {"url": url, "env": env, "home": home, "process": process, "output": output, "sessions": sessions}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()


def _cli(system, *args: str, stdin: str | None = None, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], env={**system["env"], "COLUMNS": str(columns)},
                          input=stdin, capture_output=True, text=True, timeout=120)


def _count(sessions, table, *where) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where))


def _child(system, name: str) -> dict:
    return json.loads((system["home"] / "up.json").read_text())["children"][name]


def _kill(system, name: str) -> None:
    """SIGKILL a child's whole process group (a worker's pool too), as a crash would."""
    old = _child(system, name)["pid"]
    os.killpg(old, signal.SIGKILL)
    wait_for(lambda: _child(system, name)["pid"] != old, timeout=60, message=f"careloop up to restart {name}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _listening(system) -> list[tuple[str, str]]:
    """(child, local address) of every TCP socket a process of `careloop up` listens on."""
    if shutil.which("ss") is None:
        pytest.fail("`ss` (Debian's iproute2) is needed to list listening sockets: apt-get install iproute2")
    groups = {child["pid"]: name for name, child in
              json.loads((system["home"] / "up.json").read_text())["children"].items()}
    found = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        for pid in re.findall(r"pid=(\d+)", line):
            try:
                group = os.getpgid(int(pid))
            except ProcessLookupError:
                continue
            if group in groups:
                found.append((groups[group], line.split()[3]))
    return found


def test_the_whole_loop_through_the_browser(system):
    sessions = system["sessions"]
    for username, role in (("stu.dent", "student"), ("nurse.a", "nurse"), ("nurse.b", "nurse")):
        added = _cli(system, "users", "add", username, "--role", role, "--password-stdin", stdin=PASSWORD)
        assert added.returncode == 0, added.stderr
    status = _cli(system, "up", "--status", columns=80)
    assert status.returncode == 0 and status.stdout.count(" up ") >= 6, status.stdout
    # 80 columns: no part name or path cut; the web app's address and the Redis in use are shown.
    assert f"web app:    {system['url']}\n" in status.stdout
    assert re.search(r"^redis:\s+redis://127\.0\.0\.1:\d+/0 \(started by careloop up\)$", status.stdout, re.MULTILINE)
    logs = re.search(r"^logs:\s+(\S+)/<part>\.log$", status.stdout, re.MULTILINE)
    assert logs and Path(logs[1]).resolve() == (system["home"] / "logs").resolve(), status.stdout  # shortened, not cut
    assert all(len(line) <= 80 for line in status.stdout.splitlines() if logs[1] not in line), status.stdout
    assert {"serving", "feedback-worker", "generation-worker", "training-worker", "beat", "bot", "redis"} <= {
        line.split()[0] for line in status.stdout.splitlines() if line.strip()}
    # Issue 29, 9: students first on a shared host: review generation niced 5, training 10, the rest not
    base = os.getpriority(os.PRIO_PROCESS, 0)
    niceness = {name: os.getpriority(os.PRIO_PROCESS, _child(system, name)["pid"]) - base
                for name in ("serving", "bot", "feedback-worker", "generation-worker", "training-worker")}
    assert niceness == {"serving": 0, "bot": 0, "feedback-worker": 0, "generation-worker": 5,
                        "training-worker": 10}, niceness
    doctor = _cli(system, "doctor", columns=80)
    for part in ("bot", "workers", "beat"):
        assert re.search(rf"^│ {part}\s+│ ok ", doctor.stdout, re.MULTILINE), doctor.stdout
    listening = _listening(system)
    assert {"redis", "serving", "bot"} <= {name for name, _ in listening}, listening
    assert all(address.startswith("127.0.0.1:") for _, address in listening), f"beyond loopback: {listening}"

    with open_browser() as browser:
        student = sign_in(browser, system["url"], "stu.dent", PASSWORD)
        first = ask(student, f"I am {PATIENT}, {PATIENT_EMAIL}: what is hypertension?")
        assert "Answered by careloop-demo-tiny" in first and "not for clinical use" in first

        total = sum(len(keys) for keys in JUDGMENTS.values())
        wait_for(lambda: _count(sessions, ReviewItem) >= total + 1, timeout=120,
                 message="beat to fill the review queue")
        nurse_a = sign_in(browser, system["url"], "nurse.a", PASSWORD)
        open_review(nurse_a)
        first_key, *more_keys = JUDGMENTS["nurse.a"]
        judge_with_keys(nurse_a, first_key)
        wait_for(lambda: _count(sessions, Comparison) == 1, message="the first judgment stored")
        _kill(system, "feedback-worker")
        for key in more_keys:
            judge_with_keys(nurse_a, key)
        _kill(system, "redis")
        nurse_b = sign_in(browser, system["url"], "nurse.b", PASSWORD)
        open_review(nurse_b)
        shot(nurse_b, "loop-review")
        for key in JUDGMENTS["nurse.b"]:
            judge_with_keys(nurse_b, key)
        _kill(system, "bot")  # the last judgments may still wait in its outbox: they must not be lost
        wait_for(lambda: _count(sessions, Comparison) >= total, timeout=120, message="every judgment stored")
        time.sleep(3)  # anything sent twice would have arrived by now
        for nurse, keys in JUDGMENTS.items():
            assert _count(sessions, Comparison, Comparison.annotator == nurse) == len(keys), nurse
        assert _count(sessions, DeadLetter) == 0

        wait_for(lambda: _count(sessions, TrainingRun, TrainingRun.status != "running") >= 1, timeout=600,
                 message="beat to start a training run and the run to finish")
        with sessions() as session:
            run = session.scalar(select(TrainingRun).order_by(TrainingRun.id))
            live = session.scalar(select(AdapterVersion).where(AdapterVersion.status == "live"))
        assert run.status == "promoted", (run.status, run.error, run.decision)
        assert (run.actor, run.adapter_version) == ("schedule", live.name)
        # It trained on what the nurses judged, and the gate decided on the evaluation's numbers.
        snapshot = json.loads((system["home"] / "runs" / str(run.id) / "snapshot" / "snapshot.json").read_text())
        assert {"nurse.a", "nurse.b"} <= set(snapshot["feedback_manifest"]["annotators"]), snapshot
        assert any(r.startswith("ok human preference: pair_accuracy") for r in run.decision["reasons"]), run.decision

        wait_for(lambda: _cli(system, "up", "--status").returncode == 0, timeout=120, message="the bot back")
        student = sign_in(browser, system["url"], "stu.dent", PASSWORD)  # its session died with the bot
        second = ask(student, "What is asthma?")
        assert f"Answered by {live.name}" in second, second
        shot(student, "loop-student")

        # Serving SIGKILLed after the promotion: restarted by careloop up, it serves the promoted
        # version again, not the base model; the student's open page carries on.
        _kill(system, "serving")
        wait_for(lambda: _answers(_child(system, "serving")["url"]), timeout=120,
                 message="the restarted serving to answer")
        # A new conversation: three exchanges in one would outgrow the tiny model's context.
        student.locator("#chat-new").click()
        student.wait_for_function("() => document.querySelectorAll('#chatbot .bot').length === 0")
        after_crash = ask(student, "What is a fever?")
        assert f"Answered by {live.name}" in after_crash, after_crash

        admin = sign_in(browser, system["url"], "admin", ADMIN_PASSWORD)
        admin.get_by_role("tab", name="Admin").click()
        admin.get_by_role("tab", name="Training runs").click()
        admin.locator("#runs").get_by_text("promoted").filter(visible=True).first.wait_for(timeout=30_000)
        shot(admin, "loop-admin-runs")
        admin.get_by_role("tab", name="Adapter versions").click()
        admin.locator("#version-select input").click()
        admin.get_by_role("option", name=live.name).click()
        admin.locator("#version-report").get_by_text("Gate decision").first.wait_for(timeout=30_000)
        shot(admin, "loop-admin-report")
        admin.locator("#action-rollback").click()
        admin.locator("#action-confirm").filter(visible=True).click()
        admin.locator("#admin-message").get_by_text("Rolled back").wait_for(timeout=60_000)
        third = ask(student, "What is anaemia?")
        assert "Answered by careloop-demo-tiny" in third, "the version before it answers again: the base model"

    restarted = _cli(system, "up", "--status")
    assert restarted.returncode == 0 and restarted.stdout.count(" up ") >= 6, restarted.stdout
    assert _child(system, "feedback-worker")["restarts"] >= 1
    assert all(_child(system, name)["restarts"] == 1 for name in ("redis", "bot", "serving"))
    pids = [child["pid"] for child in json.loads((system["home"] / "up.json").read_text())["children"].values()]
    system["process"].send_signal(signal.SIGINT)
    assert system["process"].wait(90) == 0, system["output"].read_text()[-2000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (system["home"] / "up.json").exists()
    assert _cli(system, "up", "--status").returncode == 1
    # No password and nothing a student wrote in any process's log.
    logs = [system["output"], *sorted((system["home"] / "logs").iterdir())]
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in (PASSWORD, ADMIN_PASSWORD, PATIENT, PATIENT_EMAIL, "what is hypertension"):
            assert secret.lower() not in text.lower(), f"{secret!r} is written in {log.name}"
