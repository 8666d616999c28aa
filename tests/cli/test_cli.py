"""The `careloop` command as a user runs it: help everywhere, doctor, build-tiny, base-model errors."""

import re

import pytest


def _commands(help_text: str) -> list[str]:
    section = help_text.split("Commands")[1]
    return re.findall(r"^│ (\S+)\s", section, flags=re.M)


def test_help_on_every_command(cli):
    top = cli("--help")  # the installed entry point, once; every command's help in process after it
    assert top.returncode == 0
    groups = _commands(top.stdout)
    assert {"doctor", "model", "db", "seed"} <= set(groups)
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner(env={"COLUMNS": "200"})
    seen = 0
    for group in groups:
        result = runner.invoke(app, [group, "--help"])
        assert result.exit_code == 0, result.output
        for sub in _commands(result.output) if "Commands" in result.output else []:
            sub_result = runner.invoke(app, [group, sub, "--help"])
            assert sub_result.exit_code == 0 and "Usage" in sub_result.output, sub_result.output
            seen += 1
    assert seen >= 5


def test_build_tiny_via_cli_reuses_the_cache(cli, tiny_model_dir):
    result = cli("model", "build-tiny", "--out", str(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    assert "tiny test model" in result.stdout and "cached build reused" in result.stdout


def test_doctor_passes_when_everything_required_is_there(cli, redis_server, tiny_model_dir):
    env = {"CARELOOP_REDIS_URL": redis_server.url, "CARELOOP_BASE_MODEL": str(tiny_model_dir)}
    assert cli("db", "upgrade", env=env).returncode == 0
    result = cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("data dir", "database", "seed data", "redis", "base model", "serving", "bot", "workers", "beat",
                  "gpu"):
        assert check in result.stdout
    assert "not fit for clinical use" in result.stdout  # a small base model is labelled as such
    assert ("careloop-demo-tiny" in result.stdout and "tiny test model" in result.stdout
            and "MB of weights" in result.stdout)
    assert re.search(r"serving\s+│ warn", result.stdout)  # optional: not running yet
    # The tiny model's generation config samples (temperature 1.0, top-p 1.0); careloop adds its penalty.
    assert "temperature 1, top-p 1, repetition penalty 1.1" in _doctor_row(result.stdout, "decoding")
    assert "the model's generation config (temperature, top_p), careloop's default" in " ".join(
        _doctor_row(result.stdout, "decoding").split())


@pytest.mark.parametrize(
    ("env", "migrated", "reason"),
    [
        ({"CARELOOP_REDIS_URL": "redis://127.0.0.1:1/0"}, True,
         "redis: redis://127.0.0.1:1/0 unreachable"),
        ({}, False, "run `careloop db upgrade`"),
        ({"CARELOOP_BASE_MODEL": ""}, True, "Run `careloop model prepare`"),
    ],
    ids=["redis-down", "schema-missing", "no-model"],
)
def test_doctor_fails_with_the_reason(cli, redis_server, tiny_model_dir, env, migrated, reason):
    full_env = {"CARELOOP_REDIS_URL": redis_server.url, "CARELOOP_BASE_MODEL": str(tiny_model_dir),
                **env}
    if migrated:
        assert cli("db", "upgrade", env=full_env).returncode == 0
    result = cli("doctor", env=full_env)
    assert result.returncode == 1
    assert "required check(s) failed" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_never_shows_the_redis_password(cli, redis_server, tiny_model_dir):
    env = {"CARELOOP_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0", "CARELOOP_BASE_MODEL": str(tiny_model_dir),
           "CARELOOP_SERVING_URL": "http://ops:hunter2@127.0.0.1:1"}
    assert cli("db", "upgrade", env=env).returncode == 0
    result = cli("doctor", env=env)
    assert result.returncode == 1
    assert "redis://:***@127.0.0.1:1/0 unreachable" in result.stderr  # the error
    # the table
    assert "redis://:***@127.0.0.1:1/0" in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    assert "http://ops:***@127.0.0.1:1" in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    assert "hunter2" not in result.stdout + result.stderr


def test_hub_model_id_offline_names_the_setting_and_the_offline_default(cli, redis_server):
    env = {"CARELOOP_REDIS_URL": redis_server.url, "CARELOOP_BASE_MODEL": "Qwen/Qwen2.5-0.5B-Instruct",
           "HF_HUB_OFFLINE": "1"}
    cli("db", "upgrade", env=env)
    result = cli("doctor", env=env)
    assert result.returncode == 1
    assert "Cannot load base model 'Qwen/Qwen2.5-0.5B-Instruct' (CARELOOP_BASE_MODEL)" in result.stderr
    assert "careloop model prepare" in result.stderr and "Traceback" not in result.stderr


def test_by_hand_commands_on_a_fresh_data_directory_say_run_db_upgrade(cli, tmp_path):
    """The README's by-hand order on a new CARELOOP_HOME: before `careloop db upgrade` each command that
    needs the database says so in one line (no SQLAlchemy traceback); after it, they work."""
    env = {"CARELOOP_HOME": str(tmp_path / "fresh")}
    for command in (["users", "list"], ["runs"], ["adapters", "list"], ["train"], ["export", "--kind", "sft",
                                                                                 "--out", str(tmp_path / "x")]):
        result = cli(*command, env=env)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, command
        assert "has no tables yet: run `careloop db upgrade`" in result.stderr, (command, result.stderr)
    assert cli("db", "upgrade", env=env).returncode == 0
    listed = cli("users", "list", env=env)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr


def _doctor_row(stdout: str, check: str) -> str:
    """The doctor table's row for ``check``, its cells joined (a long detail folds onto more lines)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"│ {re.escape(check)}\s+│", line))
    row = [lines[start]]
    for line in lines[start + 1:]:
        if not re.match(r"│\s+│", line):
            break
        row.append(line)
    return " ".join(" ".join(cell.strip() for cell in line.split("│") if cell.strip()) for line in row)


def test_doctor_checks_the_bot_workers_and_beat_each_in_one_row(cli, bot_stack, tmp_path):
    """bot_stack runs the bot and a worker on `feedback,generation`, and no beat: doctor says the bot
    answers, which queues have a worker and which has none, and that no beat has beaten lately. Each
    part is one row; none of the three is required."""
    from processes import TOKEN

    env = {"CARELOOP_HOME": str(tmp_path / "home"), "CARELOOP_DATABASE_URL": bot_stack.database_url,
           "CARELOOP_REDIS_URL": bot_stack.redis_url, "CARELOOP_SERVING_URL": bot_stack.server.url,
           "CARELOOP_BASE_MODEL": str(bot_stack.model_dir), "CARELOOP_CONTROL_TOKEN": TOKEN,
           "CARELOOP_BOT_PORT": bot_stack.url.rsplit(":", 1)[1]}
    result = cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _doctor_row(result.stdout, "bot") == f"bot ok {bot_stack.url} (the sign-in page answers)"
    assert _doctor_row(result.stdout, "workers") == (
        "workers warn 1 answered, consuming feedback, generation; none consumes training: start `careloop worker "
        "--queues training`")
    assert _doctor_row(result.stdout, "beat").startswith("beat warn no heartbeat in the last 45 s: "
                                                         "start `careloop beat`")


def test_doctor_sees_a_running_beat_and_no_worker(cli, redis_server, tiny_model_dir, tmp_path):
    """A real `careloop beat` on a private Redis with no worker: its heartbeat names its pid; the
    workers row says none answered; a bot that is not running is a warning with the command."""
    import subprocess
    import sys

    from processes import careloop_env, wait_for

    from careloop.queues import beat_heartbeat
    from careloop.redis_server import free_port

    settings = {"redis_url": redis_server.url, "base_model": str(tiny_model_dir), "bot_port": str(free_port()),
                # nothing falls due while the test runs: beat only has to be alive
                "review_fill_interval_seconds": "86400", "train_check_interval_seconds": "86400"}
    env = careloop_env(tmp_path / "home", **settings)
    assert cli("db", "upgrade", env=env).returncode == 0
    beat = subprocess.Popen([sys.executable, "-m", "cli", "beat"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (beat_heartbeat(redis_server.url) or {}).get("pid") == beat.pid, timeout=60,
                 message="careloop beat's heartbeat")
        result = cli("doctor", env=env)
    finally:
        beat.terminate()
        beat.wait(30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(rf"beat ok alive: pid {beat.pid} on \S+, \d+ s ago", _doctor_row(result.stdout, "beat"))
    assert _doctor_row(result.stdout, "workers") == (
        "workers warn no worker answered within 1 s: start `careloop worker` (or `careloop up`)")
    assert _doctor_row(result.stdout, "bot").startswith(f"bot warn http://127.0.0.1:{settings['bot_port']} not "
                                                        "answering (ConnectError); start it with `careloop bot`")
