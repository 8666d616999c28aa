"""compose.yaml, the production deployment: valid against the Compose specification, one serving
engine per profile, healthchecks, GPU where it belongs, shared adapter paths, and no secret written
in the file. Rendered by Debian's Docker Compose (`docker-compose config`); see ``render`` for what
is Compose's and what is this test's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from careloop.queues import QUEUES
from cli.main import app as cli_app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
PROFILES = {"embedded": "serving-embedded", "vllm": "serving-vllm", "tgi": "serving-tgi"}
ALWAYS = {"redis", "postgres", "migrate", "feedback-worker", "generation-worker", "training-worker", "beat", "bot"}
ENV = {"POSTGRES_PASSWORD": "pw-from-env", "CARELOOP_CONTROL_TOKEN": "token-from-env",
       "CARELOOP_BASE_MODEL": "Qwen/Qwen2.5-0.5B-Instruct"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY")


def render(profile: str, env: dict[str, str]) -> dict:
    """The services that run with ``profile``. Compose's part, by Debian's Docker Compose
    (`docker-compose config`, no daemon needed): interpolating ${VAR}, ${VAR:-default} and ${VAR:?error}
    (stopping with the message when a required one is missing), validating and normalising the file.
    Ours: Compose 1.29's `config` lists every service whatever the profile, so the spec's rule picks
    them here (no `profiles`, or one naming ``profile``); and it predates the top-level `name` (the
    project's name, checked against the specification by the schema test), so that line is left out."""
    if shutil.which("docker-compose") is None:
        pytest.fail("Docker Compose is missing: `apt-get install docker-compose` (`make system-packages` installs "
                    "it when run as root); these tests render compose.yaml with `docker-compose config`.")
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.startswith("name:"))
    environment = {key: value for key, value in os.environ.items() if key not in ENV and not key.startswith("COMPOSE_")}
    done = subprocess.run(["docker-compose", "-f", "-", "--project-directory", str(ROOT), "config"], input=text,
                          check=False, capture_output=True, text=True, env={**environment, **env}, timeout=60)
    if done.returncode != 0:
        raise ValueError(done.stderr)
    config = yaml.safe_load(done.stdout)
    config["services"] = {name: service for name, service in config["services"].items()
                          if not service.get("profiles") or profile in service["profiles"]}
    return config


def test_the_file_is_valid_against_the_compose_specification():
    checked = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                              str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_runs_every_part_with_one_serving_engine(profile):
    services = render(profile, ENV)["services"]
    assert set(services) == ALWAYS | {PROFILES[profile]}
    serving = services[PROFILES[profile]]
    assert "serving" in serving["networks"]["default"]["aliases"], "workers and bot reach it as serving:8000"
    for name, service in services.items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert service["restart"] == "unless-stopped", name
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    careloop = {name for name, service in services.items() if str(service.get("image", "")).startswith("careloop")}
    assert careloop >= {"migrate", "feedback-worker", "generation-worker", "training-worker", "beat", "bot"}
    for name in careloop - {"migrate"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        env = services[name]["environment"]
        assert env["CARELOOP_SERVING_URL"] == "http://serving:8000" and env["CARELOOP_REDIS_URL"].startswith(
            "redis://redis:") and env["CARELOOP_DATABASE_URL"].startswith("postgresql+psycopg://"), name


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_gpu_goes_to_training_and_gpu_engines_and_adapters_share_one_path(profile):
    services = render(profile, ENV)["services"]

    def gpus(service: dict) -> list:
        return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])

    assert any("gpu" in device["capabilities"] for device in gpus(services["training-worker"]))
    serving = services[PROFILES[profile]]
    assert bool(gpus(serving)) == (profile != "embedded")
    # The registry sends adapter paths as the trainer wrote them: serving must see the same volume there.
    trainer_home = services["training-worker"]["environment"]["CARELOOP_HOME"]

    def mounted(service: dict) -> set[tuple[str, str]]:
        pairs = set()
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            pairs.add((source, target))
        return pairs

    assert ("careloop-data", trainer_home) in mounted(services["training-worker"])
    assert ("careloop-data", trainer_home) in mounted(serving)


def test_published_ports_stay_on_loopback():
    for profile in PROFILES:
        for name, service in render(profile, ENV)["services"].items():
            for port in service.get("ports", []):
                host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
                assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this host"


def test_commands_name_real_cli_commands_and_queues():
    services = render("embedded", ENV)["services"]
    commands = {command.name or command.callback.__name__ for command in cli_app.registered_commands}
    commands |= {group.name for group in cli_app.registered_groups}
    for name, service in services.items():
        if str(service.get("image", "")).startswith("careloop") and service.get("command"):
            assert service["command"][0] in commands, f"{name} runs an unknown command {service['command']}"
            if "--queues" in service["command"]:
                queues = service["command"][service["command"].index("--queues") + 1].split(",")
                assert set(queues) <= set(QUEUES), name
    embedded = " ".join(services["serving-embedded"]["entrypoint"])
    assert "careloop serve --host 0.0.0.0" in embedded and "careloop model prepare" in embedded


def test_no_secret_is_written_in_the_file():
    """Every secret-looking value is a ${VARIABLE} taken from the environment, and the required ones
    stop Compose with a message when missing."""
    raw = yaml.safe_load(COMPOSE.read_text())
    found = []

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if SECRET_NAME.search(str(key)) and isinstance(item, str):
                    found.append(path + "." + str(key))
                    assert re.fullmatch(r"\$\{\w+(:?[-?][^}]*)?\}", item), f"{path}.{key} is written inline"
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if (isinstance(item, str) and item.startswith("--")
                        and SECRET_NAME.search(item.upper().replace("-", "_"))):
                    assert value[index + 1].startswith("${"), f"{path}: {item} is followed by an inline value"
                walk(item, f"{path}[{index}]")
        elif isinstance(value, str):
            for credentials in re.findall(r"://[^@/\s]+:([^@/\s]+)@", value):
                assert credentials.startswith("${"), f"{path} has a password in a URL"

    walk(raw, "compose")
    assert found, "the walk saw the secret settings"
    for missing in ("POSTGRES_PASSWORD", "CARELOOP_CONTROL_TOKEN"):
        with pytest.raises(ValueError, match=missing):
            render("embedded", {key: value for key, value in ENV.items() if key != missing})


def test_students_come_first_on_shared_cpus_as_with_careloop_up():
    """Issue 29, 9: review generation and training yield the CPUs to serving, the bot and storing
    feedback, in compose (CPU weights) as in `careloop up` (niceness), and in the same order."""
    from cli.up import NICENESS

    services = render("embedded", ENV)["services"]
    weight = {name: int(services[name].get("cpu_shares", 1024)) for name in
              ("serving-embedded", "bot", "feedback-worker", "generation-worker", "training-worker")}
    assert weight["serving-embedded"] == weight["bot"] == weight["feedback-worker"] == 1024
    assert weight["feedback-worker"] > weight["generation-worker"] > weight["training-worker"], weight
    assert 0 < NICENESS["generation-worker"] < NICENESS["training-worker"]
