"""`careloop up` on a fresh data directory (tiny model): every part comes up, a SIGKILLed worker
and Redis are restarted, and Ctrl-C (SIGINT) stops every child. The whole loop through the browser
on this system is issue 7's remaining work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from processes import careloop_env, wait_for

from careloop.redis_server import free_port

PASSWORD = "correct-horse-battery"
ADMIN_PASSWORD = "admin-horse-battery"


@pytest.fixture
def system(tmp_path, tiny_model_dir):
    """`careloop up` on fresh ports and a fresh data directory; stopped with SIGINT (Ctrl-C)."""
    home = tmp_path / "home"
    env = careloop_env(home, base_model=str(tiny_model_dir), redis_url=f"redis://127.0.0.1:{free_port()}/0",
                       serving_port=str(free_port()), bot_port=str(free_port()), admin_password=ADMIN_PASSWORD,
                       review_max_tokens="24", review_queue_target="8", celery_visibility_timeout="10")
    output = tmp_path / "up.out"
    process = subprocess.Popen([sys.executable, "-m", "careloop", "up"], env=env, stdout=output.open("w"),
                               stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "careloop is up" in output.read_text() or process.poll() is not None, timeout=300,
                 message="careloop up to say it is up")
        assert process.poll() is None, output.read_text()[-3000:]
        line = next(x for x in output.read_text().splitlines() if x.startswith("careloop is up"))
        url = line.split("open ")[1].split(" ")[0].rstrip("/")
        yield {"url": url, "env": env, "home": home, "process": process, "output": output}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()


def _cli(system, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "careloop", *args], env={**system["env"], "COLUMNS": "200"},
                          input=stdin, capture_output=True, text=True, timeout=120)


def _child(system, name: str) -> dict:
    return json.loads((system["home"] / "up.json").read_text())["children"][name]


def _kill(system, name: str) -> None:
    """SIGKILL a child's whole process group (a worker's pool too), as a crash would."""
    old = _child(system, name)["pid"]
    os.killpg(old, signal.SIGKILL)
    wait_for(lambda: _child(system, name)["pid"] != old, timeout=60, message=f"careloop up to restart {name}")


def test_careloop_up_runs_restarts_and_stops_everything(system):
    added = _cli(system, "users", "add", "stu.dent", "--role", "student", "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    status = _cli(system, "up", "--status")
    assert status.returncode == 0 and status.stdout.count(" up ") >= 6, status.stdout
    _kill(system, "feedback-worker")
    _kill(system, "redis")
    wait_for(lambda: _cli(system, "up", "--status").returncode == 0, timeout=120, message="every part up again")
    assert _child(system, "feedback-worker")["restarts"] >= 1 and _child(system, "redis")["restarts"] == 1
    pids = [child["pid"] for child in json.loads((system["home"] / "up.json").read_text())["children"].values()]
    system["process"].send_signal(signal.SIGINT)
    assert system["process"].wait(90) == 0, system["output"].read_text()[-2000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (system["home"] / "up.json").exists()
    assert _cli(system, "up", "--status").returncode == 1
