from pathlib import Path

import pytest

from careloop.settings import Settings, SettingsError, load_settings


def test_defaults_put_everything_under_the_data_dir(monkeypatch):
    monkeypatch.delenv("CARELOOP_HOME")
    settings = load_settings()
    assert settings.home == Path("./var")
    assert settings.resolved_database_url == f"sqlite:///{Path('./var/careloop.db').resolve()}"
    assert settings.models_dir == Path("./var/models")
    assert settings.base_model == ""  # the offline default, SmolLM2-135M-Instruct
    assert settings.resolved_retrieval_backend == "bm25s"  # SQLite: the embedded index


def test_environment_variables_are_parsed_and_typed(monkeypatch):
    monkeypatch.setenv("CARELOOP_DATABASE_URL", "postgresql+psycopg://u@db/careloop")
    monkeypatch.setenv("CARELOOP_LOG_LEVEL", "debug")
    monkeypatch.setenv("CARELOOP_LOG_JSON", "true")
    monkeypatch.setenv("CARELOOP_RANDOM_SEED", "7")
    monkeypatch.setenv("CARELOOP_SERVING_URL", "http://gpu-box:8000/")
    settings = load_settings()
    assert settings.resolved_database_url == "postgresql+psycopg://u@db/careloop"
    assert settings.log_level == "DEBUG" and settings.log_json is True and settings.random_seed == 7
    assert settings.serving_url == "http://gpu-box:8000"
    assert settings.resolved_retrieval_backend == "postgresql"  # the library searched in the database


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("CARELOOP_SERVING_BACKEND=vllm\n")
    assert load_settings().serving_backend == "vllm"


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("CARELOOP_RANDOM_SEED", "minus one", "valid integer"),
        ("CARELOOP_RANDOM_SEED", "-1", "greater than or equal to 0"),
        ("CARELOOP_SERVING_BACKEND", "huge", "'embedded', 'vllm' or 'tgi'"),
        ("CARELOOP_SERVING_DTYPE", "float16", "'float32' or 'bfloat16'"),
        ("CARELOOP_REDIS_URL", "localhost:6379", "must start with redis://"),
        ("CARELOOP_DATABASE_URL", "mysql://x", "sqlite:/// or postgresql"),
        ("CARELOOP_SERVING_URL", "gpu-box:8000", "must start with http://"),
        ("CARELOOP_LOG_JSON", "maybe", "valid boolean"),
        ("CARELOOP_RETRIEVAL_BACKEND", "elastic", "'bm25s' or 'postgresql'"),
        ("CARELOOP_RETRIEVAL_BACKEND", "postgresql", "set CARELOOP_DATABASE_URL to a PostgreSQL URL"),
    ],
)
def test_bad_values_give_one_clear_message_naming_the_variable(monkeypatch, variable, value, reason):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and reason in message and repr(value) in message


@pytest.mark.parametrize(("variable", "value", "shown"), [
    ("CARELOOP_REDIS_URL", "http://:hunter2@cache:6379/0", "'http://:***@cache:6379/0'"),
    ("CARELOOP_DATABASE_URL", "mysql://app:hunter2@db/careloop", "'mysql://app:***@db/careloop'"),
    ("CARELOOP_REDIS_URL", "app:hunter2@cache:6379", "'app:***@cache:6379'"),
    ("CARELOOP_SERVING_URL", "gpu:8000?key=a b", "'gpu:8000?key=a b'"),
])
def test_bad_values_are_shown_without_their_passwords(monkeypatch, variable, value, shown):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and shown in message and "hunter2" not in message


def test_a_bad_credential_setting_is_never_echoed(monkeypatch):
    monkeypatch.setenv("CARELOOP_BOT_ALLOWED_ORIGINS", "https://ok.example")
    with pytest.raises(SettingsError) as caught:
        load_settings(admin_password=["hunter2"], judge_api_key={"k": "hunter2"})
    message = str(caught.value)
    assert "CARELOOP_ADMIN_PASSWORD" in message and "CARELOOP_JUDGE_API_KEY" in message
    assert "value hidden" in message and "hunter2" not in message


def test_cli_reports_bad_settings_without_a_traceback(cli):
    result = cli("doctor", env={"CARELOOP_SERVING_BACKEND": "huge"})
    assert result.returncode == 2
    assert "CARELOOP_SERVING_BACKEND" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_readme_documents_every_setting():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f"CARELOOP_{name.upper()}" for name in Settings.model_fields
               if f"`CARELOOP_{name.upper()}`" not in readme]
    assert not missing, f"README.md configuration table lacks {missing}"



def test_processes_starting_together_read_one_whole_control_token(tmp_path):
    """Issue 18 (suspected, confirmed): the first reader created `control.token` empty and wrote it
    afterwards, so another starting beside it read an empty token (and answered every control call
    401), or, seeing no file yet, crashed creating it too. Now the token is written beside its place
    and linked in whole. Readers here are threads switching as often as Python allows (the race
    between processes is the same, but rarer to hit on demand)."""
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for attempt in range(30):
            home = tmp_path / f"home{attempt}"
            start = threading.Barrier(8)

            def read(_: int, home: Path = home, start: threading.Barrier = start) -> str:
                settings = Settings(home=home, control_token="")
                start.wait()
                return settings.resolved_control_token()

            with ThreadPoolExecutor(8) as pool:
                tokens = set(pool.map(read, range(8)))
            assert len(tokens) == 1 and "" not in tokens, f"attempt {attempt}: readers got {tokens}"
            assert (home / "control.token").stat().st_mode & 0o777 == 0o600
            assert [path.name for path in home.iterdir()] == ["control.token"], "no temporary file is left"
    finally:
        sys.setswitchinterval(interval)
