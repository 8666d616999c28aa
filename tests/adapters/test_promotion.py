"""Promotion and rollback against a real server: registry + client + engine together."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from processes import stop_server

from adapters import rollout
from adapters.registry import AdapterVersion, Registry, RegistryError, Status
from careloop import audit, db
from serving.client import ServingClient, ServingRejected, ServingUnavailable

BASE = "careloop-demo-tiny"
QUESTION = [{"role": "user", "content": "What is hypertension?"}]


@pytest.fixture
def database_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'careloop.db'}"
    db.upgrade(url)
    return url


@pytest.fixture
def registry(database_url) -> Registry:
    engine = db.make_engine(database_url)
    yield Registry(db.session_factory(engine), BASE)
    engine.dispose()


def _client(server, registry: Registry, **kwargs) -> ServingClient:
    def live() -> str | None:
        version = registry.live()
        return version.name if version else None

    return ServingClient(server.url, token=server.token, live_lookup=live, **{"cache_seconds": 0, **kwargs})


def _register(registry: Registry, server, name: str, trained: str) -> None:
    registry.register(name, server.adapter_dir / trained, actor="test")


def test_promote_then_rollback(server, registry):
    client = _client(server, registry)
    _register(registry, server, "pr-v0001", "med-v0001")
    _register(registry, server, "pr-v0002", "med-v0002")
    assert client.chat(QUESTION, max_tokens=4).model == BASE  # nothing live: the base model answers

    first = rollout.promote(registry, "pr-v0001", client, actor="admin")
    assert (first.live, first.previous) == ("pr-v0001", None)
    assert client.chat(QUESTION, max_tokens=4).model == "pr-v0001"

    second = rollout.promote(registry, "pr-v0002", client, actor="admin")
    assert (second.live, second.previous) == ("pr-v0002", "pr-v0001")
    assert registry.get("pr-v0001").status == Status.RETIRED
    assert client.chat(QUESTION, max_tokens=4).model == "pr-v0002"
    assert rollout.unload_stale(registry, client, grace_seconds=0) == ["pr-v0001"]
    assert "pr-v0001" not in client.loaded_adapters()

    back = rollout.rollback(registry, client, actor="admin", reason="nurses disliked it")
    assert (back.live, back.previous) == ("pr-v0001", "pr-v0002")
    assert "pr-v0001" in client.loaded_adapters()  # reloaded for the rollback
    assert client.chat(QUESTION, max_tokens=4).model == "pr-v0001"
    rolled_back = registry.get("pr-v0002")
    assert (rolled_back.status, rolled_back.note) == (Status.REJECTED, "nurses disliked it")
    with registry.sessions() as session:
        actions = [(e.action, e.target, e.actor) for e in reversed(audit.recent(session))]
    assert actions[-3:] == [("adapter.promote", "pr-v0001", "admin"), ("adapter.promote", "pr-v0002", "admin"),
                            ("adapter.rollback", "pr-v0001", "admin")]

    with pytest.raises(RegistryError, match="pr-v0002 is rejected"):
        rollout.promote(registry, "pr-v0002", client, actor="admin")
    registry.retire("pr-v0001", actor="admin")  # retiring the live version: the base model answers
    assert registry.live() is None and client.chat(QUESTION, max_tokens=4).model == BASE
    rollout.promote(registry, "pr-v0001", client, actor="admin")  # a retired version may come back
    # It replaced no version: rolling it back leaves the base model answering.
    back = rollout.rollback(registry, client, actor="admin", reason="back to base")
    assert (back.live, back.previous) == (BASE, "pr-v0001")
    assert registry.live() is None and registry.get("pr-v0001").status == Status.REJECTED
    assert client.chat(QUESTION, max_tokens=4).model == BASE


def test_a_broken_adapter_is_never_made_live(server, registry, tmp_path_factory):
    broken = server.adapter_dir / "broken-v0001"
    shutil.copytree(server.adapter_dir / "med-v0001", broken, dirs_exist_ok=True)
    (broken / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    client = _client(server, registry)
    _register(registry, server, "br-v0001", "med-v0001")
    rollout.promote(registry, "br-v0001", client, actor="admin")
    registry.register("br-v0002", broken, actor="test")
    with pytest.raises(ServingRejected) as failure:
        rollout.promote(registry, "br-v0002", client, actor="admin")
    assert failure.value.status == 400
    assert registry.live().name == "br-v0001" and registry.get("br-v0002").status == Status.CANDIDATE
    assert client.chat(QUESTION, max_tokens=4).model == "br-v0001"


def _train_to_end_at_once(base_dir, out) -> None:
    """A real LoRA fine-tune whose only lesson is: answer the smoke prompt with the end of turn."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    eos = model.generation_config.eos_token_id
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    ids = torch.tensor([[*prompt, eos if isinstance(eos, int) else eos[0]]])
    labels = torch.full_like(ids, -100)
    labels[0, -1] = ids[0, -1]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(30):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)


def test_a_version_that_loads_but_answers_nothing_is_never_made_live(server, registry, tiny_model_dir):
    """A real adapter trained to end its answer at once: serving loads it, but the smoke test gets
    0 tokens from it, so the promotion fails with that reason and the old version stays live."""
    mute = server.adapter_dir / "mute-v0001"
    if not (mute / "adapter_config.json").is_file():
        _train_to_end_at_once(tiny_model_dir, mute)
    client = _client(server, registry)
    _register(registry, server, "sm-v0001", "med-v0001")
    rollout.promote(registry, "sm-v0001", client, actor="admin")
    registry.register("sm-v0002", mute, actor="test")
    silent = client.chat(QUESTION, model="sm-v0002", max_tokens=8, temperature=0) if server.load(
        "sm-v0002", mute).status_code == 200 else None
    assert silent is not None and (silent.model, silent.completion_tokens) == ("sm-v0002", 0), silent

    with pytest.raises(ServingUnavailable, match="smoke test of sm-v0002 failed: answered by 'sm-v0002' with 0 tokens"):
        rollout.promote(registry, "sm-v0002", client, actor="admin")
    assert registry.live().name == "sm-v0001" and registry.get("sm-v0002").status == Status.CANDIDATE
    assert client.chat(QUESTION, max_tokens=4).model == "sm-v0001"
    with registry.sessions() as session:
        assert [e.target for e in audit.recent(session) if e.action == "adapter.promote"] == ["sm-v0001"]
    server.unload("sm-v0002")
    client.close()


def test_promote_and_rollback_under_20_streaming_clients(server, registry):
    client = _client(server, registry)
    for name, trained in [("ld-v0001", "med-v0001"), ("ld-v0002", "med-v0002"), ("ld-v0003", "med-v0002")]:
        _register(registry, server, name, trained)
    stop = threading.Event()

    def chat_until_stopped(index: int) -> tuple[list[str], list[str]]:
        answered, failures = [], []
        while not stop.is_set():
            try:
                deltas = list(client.stream_chat(QUESTION, max_tokens=16, temperature=1.0, seed=index))
                assert deltas[-1].finish_reason in ("stop", "length"), deltas[-1]
                answered.append(deltas[-1].model)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                failures.append(repr(exc))
        return answered, failures

    with ThreadPoolExecutor(20) as pool:
        clients = [pool.submit(chat_until_stopped, i) for i in range(20)]
        time.sleep(1)
        steps = [lambda: rollout.promote(registry, "ld-v0001", client, actor="admin"),
                 lambda: rollout.promote(registry, "ld-v0002", client, actor="admin"),
                 lambda: rollout.rollback(registry, client, actor="admin"),
                 lambda: rollout.promote(registry, "ld-v0003", client, actor="admin")]
        for step in steps:
            promotion = step()
            # Requests started after the flip are answered by the new live version.
            assert client.chat(QUESTION, max_tokens=2).model == promotion.live
            time.sleep(0.5)
            rollout.unload_stale(registry, client, grace_seconds=0.3)
        time.sleep(0.5)
        stop.set()
        results = [c.result() for c in clients]
    failures = [f for _, fails in results for f in fails]
    answered = [model for models, _ in results for model in models]
    assert failures == [], failures[:5]
    assert {"ld-v0001", "ld-v0002", "ld-v0003"} <= set(answered), set(answered)
    assert registry.live().name == "ld-v0003"
    assert set(client.loaded_adapters()) & {"ld-v0001", "ld-v0002"} == set()


def test_client_keeps_the_last_live_version_while_the_database_is_down(server, postgres_databases):
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    registry = Registry(db.session_factory(engine), BASE)
    client = _client(server, registry)
    _register(registry, server, "pg-v0001", "med-v0001")
    rollout.promote(registry, "pg-v0001", client, actor="admin")
    assert client.chat(QUESTION, max_tokens=4).model == "pg-v0001"  # the client has seen it live
    name = sa.engine.make_url(url).database
    with postgres_databases.admin.connect() as admin:
        admin.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            with pytest.raises(sa.exc.OperationalError):
                registry.live()  # the database is really unreachable
            assert client.chat(QUESTION, max_tokens=4).model == "pg-v0001"
        finally:
            admin.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    engine.dispose()


def test_a_restarted_server_serves_the_live_version_again(server, server_factory, database_url, registry):
    _register(registry, server, "rs-v0001", "med-v0001")
    rollout.promote(registry, "rs-v0001", _client(server, registry), actor="admin")
    restarted = server_factory(database_url=database_url)
    names = [m["id"] for m in httpx.get(f"{restarted.url}/v1/models").json()["data"]]
    assert names == [BASE, "rs-v0001"]


def test_adapters_cli(cli, server, database_url, tiny_model_dir):
    env = {"CARELOOP_DATABASE_URL": database_url, "CARELOOP_SERVING_URL": server.url,
           "CARELOOP_CONTROL_TOKEN": server.token, "CARELOOP_BASE_MODEL": str(tiny_model_dir),
           "CARELOOP_PROMOTION_GRACE_SECONDS": "0"}
    for name, trained in [("cli-v0001", "med-v0001"), ("cli-v0002", "med-v0002")]:
        done = cli("adapters", "register", name, str(server.adapter_dir / trained), "--actor", "ana", env=env)
        assert done.returncode == 0, done.stderr
    promoted = cli("adapters", "promote", "cli-v0001", env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert "cli-v0001 is live (was the base model)" in promoted.stdout
    promoted = cli("adapters", "promote", "cli-v0002", env=env)
    assert "cli-v0002 is live (was cli-v0001)" in promoted.stdout and "unloaded: cli-v0001" in promoted.stdout
    listing = cli("adapters", "list", env=env).stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in listing.splitlines() if "cli-v" in line}
    assert rows == {"cli-v0001": ["retired", "no"], "cli-v0002": ["live", "yes"]}
    rolled = cli("adapters", "rollback", "--reason", "worse answers", env=env)
    assert rolled.returncode == 0 and "cli-v0001 answers again" in rolled.stdout

    # Bad input: a clear message and exit 1, never a traceback.
    for args, message in [(("promote", "nope"), "no adapter version named 'nope'"),
                          (("promote", "cli-v0002"), "cli-v0002 is rejected"),
                          (("register", "cli-v0001", str(server.adapter_dir)), "adapter_config.json missing"),
                          (("register", "cli-v0009", str(server.adapter_dir / "med-v0001")), None)]:
        done = cli("adapters", *args, env=env)
        if message is None:
            assert done.returncode == 0, done.stderr
            continue
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    down = cli("adapters", "promote", "cli-v0009", env={**env, "CARELOOP_SERVING_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1 and "unreachable" in down.stderr and "Traceback" not in down.stderr


def test_with_several_replicas_every_one_loads_answers_and_unloads_the_version(server, server_factory, registry):
    """CARELOOP_SERVING_REPLICAS: behind a load balancer each replica must have the live version, so
    promotion loads and smoke-tests it on every one, and nothing flips if one of them cannot."""
    replica = server_factory()
    client = _client(server, registry, replicas=[server.url, replica.url])
    _register(registry, server, "rep-v0001", "med-v0001")
    _register(registry, server, "rep-v0002", "med-v0002")
    rollout.promote(registry, "rep-v0001", client, actor="admin")
    for each in client.replicas():
        assert "rep-v0001" in each.loaded_adapters()
        assert each.chat(QUESTION, model="rep-v0001", max_tokens=4).model == "rep-v0001", each.url
    assert "rep-v0001" in client.loaded_everywhere()

    stop_server(replica)
    with pytest.raises(ServingUnavailable, match=replica.url):
        rollout.promote(registry, "rep-v0002", client, actor="admin")
    assert registry.live().name == "rep-v0001", "a replica that cannot load it stops the promotion"
    assert registry.get("rep-v0002").status == Status.CANDIDATE
    client.close()

    restarted = server_factory(serving_port=replica.url.rsplit(":", 1)[1])  # a new replica at the same address
    client = _client(server, registry, replicas=[server.url, restarted.url])
    rollout.promote(registry, "rep-v0002", client, actor="admin")
    assert {each.chat(QUESTION, model=client.resolve_model(), max_tokens=4).model
            for each in client.replicas()} == {"rep-v0002"}
    assert rollout.unload_stale(registry, client, grace_seconds=0) == ["rep-v0001"]
    assert all("rep-v0001" not in each.loaded_adapters() for each in client.replicas())
    client.close()


def _serving_models(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]]


def _promote_in_background(registry: Registry, name: str, client: ServingClient) -> tuple[threading.Thread, list]:
    """Start promoting ``name`` in a thread; the list receives None, or what the promotion raised."""
    outcome: list[BaseException | None] = []

    def promote() -> None:
        try:
            rollout.promote(registry, name, client, actor="admin")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (what the promotion raised is what the tests check)
            outcome.append(exc)

    thread = threading.Thread(target=promote)
    thread.start()
    return thread, outcome


def _second_version_pending(server_factory, database_url: str, registry: Registry, prefix: str):
    """Serving with ``{prefix}-v0001`` live and ``{prefix}-v0002`` registered: (server, its port, client)."""
    server = server_factory(database_url=database_url)
    client = _client(server, registry)
    _register(registry, server, f"{prefix}-v0001", "med-v0001")
    _register(registry, server, f"{prefix}-v0002", "med-v0002")
    rollout.promote(registry, f"{prefix}-v0001", client, actor="admin")
    return server, server.url.rsplit(":", 1)[1], client


def test_serving_killed_during_a_promotion_changes_nothing_live(server_factory, database_url, registry):
    """Serving SIGKILLed with the promotion's requests in flight (frozen first, so the kill lands
    before it has loaded the version): the promotion fails with a reason, the old version stays
    live, and serving restarted at the same address serves it."""
    doomed, port, client = _second_version_pending(server_factory, database_url, registry, "kl")

    # Frozen, serving has accepted the promotion's connection but answers nothing; then it dies.
    os.kill(doomed.process.pid, signal.SIGSTOP)
    promoting, outcome = _promote_in_background(registry, "kl-v0002", client)
    time.sleep(1.0)
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(10)
    promoting.join(30)
    assert not promoting.is_alive(), "the promotion hung after serving died"
    (error,) = outcome
    assert isinstance(error, ServingUnavailable) and "unreachable" in str(error), error
    assert registry.live().name == "kl-v0001"
    assert registry.get("kl-v0002").status == Status.CANDIDATE, "it can be promoted again"
    with registry.sessions() as session:
        assert [e.target for e in audit.recent(session) if e.action == "adapter.promote"] == ["kl-v0001"]

    restarted = server_factory(database_url=database_url, serving_port=port)
    assert _serving_models(restarted) == [BASE, "kl-v0001"]
    client.close()
    client = _client(restarted, registry)
    assert client.chat(QUESTION, max_tokens=4).model == "kl-v0001"
    rollout.promote(registry, "kl-v0002", client, actor="admin")
    assert client.chat(QUESTION, max_tokens=4).model == "kl-v0002"
    client.close()


def test_serving_killed_between_loading_and_the_flip_serves_the_new_version_once_restarted(
        server_factory, postgres_databases):
    """Serving SIGKILLed after it loaded and answered the new version, while the registry waits for
    its row lock (another admin's transaction holds it): the flip still happens, and serving
    restarted loads what the registry says is live, so serving and registry agree."""
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    registry = Registry(db.session_factory(engine), BASE)
    doomed, port, client = _second_version_pending(server_factory, url, registry, "fl")

    with engine.connect() as other_admin:
        other_admin.execute(sa.text("SELECT name FROM adapter_versions WHERE name = 'fl-v0002' FOR UPDATE"))
        promoting, outcome = _promote_in_background(registry, "fl-v0002", client)
        deadline = time.monotonic() + 60
        while "fl-v0002" not in _serving_models(doomed):  # loaded and smoke-tested; the flip waits
            assert time.monotonic() < deadline, "serving never loaded fl-v0002"
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(10)
        assert promoting.is_alive(), "the flip waits for the row lock"
        other_admin.rollback()
    promoting.join(30)
    assert outcome == [None], outcome
    assert registry.live().name == "fl-v0002"

    restarted = server_factory(database_url=url, serving_port=port)
    assert _serving_models(restarted) == [BASE, "fl-v0002"]
    client.close()
    client = _client(restarted, registry)
    assert client.chat(QUESTION, max_tokens=4).model == "fl-v0002"
    client.close()
    engine.dispose()


def test_two_admins_promoting_at_once_one_wins_and_the_other_is_refused(cli, server, postgres_databases,
                                                                        tiny_model_dir):
    """Two `careloop adapters promote` processes, each past its load and smoke test, flip at the same
    moment (both wait on the live row, which a third transaction holds until both are there): one
    wins, the other is refused with the reason, and exactly one version is live."""
    url = postgres_databases()
    db.upgrade(url)
    engine = db.make_engine(url)
    registry = Registry(db.session_factory(engine), BASE)
    for name, trained in [("race-v0001", "med-v0001"), ("race-v0002", "med-v0001"), ("race-v0003", "med-v0002")]:
        _register(registry, server, name, trained)
    client = _client(server, registry)
    rollout.promote(registry, "race-v0001", client, actor="admin")
    env = {**os.environ, "CARELOOP_DATABASE_URL": url, "CARELOOP_SERVING_URL": server.url,
           "CARELOOP_CONTROL_TOKEN": server.token, "CARELOOP_BASE_MODEL": str(tiny_model_dir), "COLUMNS": "200"}
    database = sa.engine.make_url(url).database
    waiting_on_a_lock = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                                "AND wait_event_type = 'Lock'")

    with engine.connect() as holder:
        holder.execute(sa.text("SELECT name FROM adapter_versions WHERE name = 'race-v0001' FOR UPDATE"))
        admins = {name: subprocess.Popen([sys.executable, "-m", "cli", "adapters", "promote", name, "--no-wait"],
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for name in ("race-v0002", "race-v0003")}
        deadline = time.monotonic() + 120
        with postgres_databases.admin.connect() as admin:
            while admin.execute(waiting_on_a_lock, {"db": database}).scalar() < 2:
                finished = {n: p.poll() for n, p in admins.items() if p.poll() is not None}
                assert not finished and time.monotonic() < deadline, (
                    f"both promotions should wait at the flip: {finished}",
                    {n: p.communicate(timeout=60) for n, p in admins.items() if n in finished})
                time.sleep(0.1)
        holder.rollback()  # both flips go ahead at once
    outcomes = {name: (process.wait(120), *process.communicate()) for name, process in admins.items()}
    winners = [name for name, (code, _, _) in outcomes.items() if code == 0]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    (loser,) = set(admins) - {winner}
    code, out, err = outcomes[loser]
    assert code == 1 and "another promotion changed the live version at the same time" in err, outcomes[loser]
    assert "Traceback" not in err and f"{winner} is live (was race-v0001)" in outcomes[winner][1]

    with registry.sessions() as session:
        live = session.scalars(sa.select(AdapterVersion.name).where(AdapterVersion.status == Status.LIVE)).all()
        promotions = [e.target for e in audit.recent(session) if e.action == "adapter.promote"]
    assert live == [winner]
    assert registry.get(loser).status == Status.CANDIDATE, "the refused version can be promoted again"
    assert registry.get("race-v0001").status == Status.RETIRED
    assert sorted(promotions) == sorted(["race-v0001", winner])
    assert client.chat(QUESTION, max_tokens=4).model == winner
    client.close()
    engine.dispose()


def test_clients_pick_up_a_new_version_once_their_live_cache_window_has_passed(server, database_url, registry,
                                                                               monkeypatch, tiny_model_dir):
    """CARELOOP_LIVE_CACHE_SECONDS=4: a client built from the settings keeps answering with the version
    it last read for that long after reading it, and asks the registry again after it."""
    window = 4.0
    for key, value in {"DATABASE_URL": database_url, "SERVING_URL": server.url, "CONTROL_TOKEN": server.token,
                       "BASE_MODEL": str(tiny_model_dir), "LIVE_CACHE_SECONDS": str(window)}.items():
        monkeypatch.setenv(f"CARELOOP_{key}", value)
    from careloop.settings import get_settings

    get_settings.cache_clear()
    _register(registry, server, "lc-v0001", "med-v0001")
    _register(registry, server, "lc-v0002", "med-v0002")
    admin = _client(server, registry)
    rollout.promote(registry, "lc-v0001", admin, actor="admin")
    student = rollout.open_client(get_settings())
    read_from = time.monotonic()
    assert student.chat(QUESTION, max_tokens=2).model == "lc-v0001"  # it reads the registry here
    read_until = time.monotonic()
    rollout.promote(registry, "lc-v0002", admin, actor="admin")
    assert time.monotonic() < read_from + window, "the promotion took longer than the window; widen it"

    answers = []  # (started, ended, model)
    while not answers or answers[-1][0] <= read_until + window:
        started = time.monotonic()
        model = student.chat(QUESTION, max_tokens=2).model
        answers.append((started, time.monotonic(), model))
        time.sleep(0.2)
    within = [model for _, ended, model in answers if ended < read_from + window]
    after = [model for started, _, model in answers if started > read_until + window]
    assert within and set(within) == {"lc-v0001"}, answers  # the cached version, inside the window
    assert after and set(after) == {"lc-v0002"}, answers  # the new one, as soon as the window has passed
    assert admin.chat(QUESTION, max_tokens=2).model == "lc-v0002"  # a client without a cache: at once
    student.close()
    admin.close()


def test_an_unload_crossing_a_rollback_leaves_the_live_version_loaded(server, registry, monkeypatch):
    """Issue 31, 12: ``unload_stale`` checked that the retired version was out of use, then unloaded
    it; a rollback to it landing in between left the live version unloaded, and every chat failed.
    The rollback's flip is made to land exactly there: the version must end up loaded and answering."""
    client = _client(server, registry)
    _register(registry, server, "ux-v0001", "med-v0001")
    _register(registry, server, "ux-v0002", "med-v0002")
    rollout.promote(registry, "ux-v0001", client, actor="admin")
    rollout.promote(registry, "ux-v0002", client, actor="admin")
    unload = client.unload_adapter

    def rollback_lands_then_unload(name: str) -> None:
        if name == "ux-v0001":
            registry.restore_replaced("ux-v0002", actor="admin", reason="crossing the cleanup")
        unload(name)

    monkeypatch.setattr(client, "unload_adapter", rollback_lands_then_unload)
    assert rollout.unload_stale(registry, client, grace_seconds=0) == []
    assert registry.live().name == "ux-v0001"
    assert "ux-v0001" in client.loaded_adapters()
    assert client.chat(QUESTION, max_tokens=4).model == "ux-v0001"
    client.close()


def test_a_promotion_crossing_an_unload_leaves_the_live_version_loaded(server, registry, monkeypatch):
    """The other order: the promotion saw the retired version still loaded (so loaded nothing), the
    cleanup's unload landed before the flip: the promotion loads it again after its flip."""
    client = _client(server, registry)
    _register(registry, server, "pu-v0001", "med-v0001")
    _register(registry, server, "pu-v0002", "med-v0002")
    rollout.promote(registry, "pu-v0001", client, actor="admin")
    rollout.promote(registry, "pu-v0002", client, actor="admin")
    make_live = registry.make_live

    def unloaded_then_flip(name: str, *, actor: str) -> str | None:
        client.unload_adapter(name)  # the cleanup's unload, between the promotion's check and its flip
        return make_live(name, actor=actor)

    monkeypatch.setattr(registry, "make_live", unloaded_then_flip)
    rollout.promote(registry, "pu-v0001", client, actor="admin")
    assert registry.live().name == "pu-v0001"
    assert "pu-v0001" in client.loaded_adapters()
    assert client.chat(QUESTION, max_tokens=4).model == "pu-v0001"
    client.close()
