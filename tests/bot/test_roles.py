"""Role enforcement on the server: every endpoint of the running bot, called directly through
gradio_client (as a script or a curious student would), for every role. A hidden tab is not the
protection; the refusal is."""

from __future__ import annotations

import json
import re
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from support import ACCOUNTS, PASSWORD

from careloop import accounts

PAGE_OF = {"chat": "chat", "regenerate": "chat", "new_conversation": "chat", "open_conversation": "chat",
           "rate": "chat", "review_next": "review", "review_submit": "review", "review_skip": "review",
           "review_amend": "review",
           "admin_overview": "admin", "admin_runs": "admin", "admin_report": "admin", "admin_act": "admin",
           "admin_train": "admin", "admin_export": "admin", "admin_account_add": "admin",
           "admin_account_role": "admin", "admin_account_disable": "admin", "admin_account_enable": "admin",
           "admin_account_reset": "admin", "admin_library": "admin", "admin_library_add": "admin",
           "admin_library_remove": "admin", "admin_audit": "admin", "change_password": "own account"}
ALLOWED = {"student": {"chat", "own account"}, "nurse": {"chat", "review", "own account"},
           "physician": {"chat", "review", "own account"}, "admin": {"chat", "admin", "own account"}}


def _client(stack, username: str, password: str = PASSWORD) -> Client:
    return Client(stack.url, auth=(username, password), verbose=False)


def _call(client: Client, endpoint: str) -> str:
    """Call ``endpoint`` with a blank for each required argument; the result or the error text."""
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"][f"/{endpoint}"]
    args = [None] * len(info["parameters"])
    try:
        client.predict(*args, api_name=f"/{endpoint}")
    except Exception as exc:  # noqa: BLE001 - gradio_client raises AppError or a generic error
        return str(exc)
    return "ok"


def test_every_endpoint_is_listed_here(bot_stack):
    """A new endpoint must be added to the matrix (and so to a page) before it ships."""
    endpoints = _client(bot_stack, "ad.min").view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {name.lstrip("/") for name in endpoints} == set(PAGE_OF)


@pytest.mark.parametrize("username", sorted(ACCOUNTS))
def test_each_role_reaches_exactly_its_pages(bot_stack, username):
    role = ACCOUNTS[username]
    client = _client(bot_stack, username)
    for endpoint, page in PAGE_OF.items():
        outcome = _call(client, endpoint)
        refused = f"cannot use the {page} page" in outcome
        assert refused == (page not in ALLOWED[role]), f"{role} calling /{endpoint}: {outcome}"


def test_anonymous_and_wrong_passwords_get_nothing(bot_stack):
    assert httpx.get(f"{bot_stack.url}/config").status_code == 401
    assert httpx.get(f"{bot_stack.url}/gradio_api/info").status_code == 401
    with pytest.raises(Exception, match="credentials were not provided"):
        Client(bot_stack.url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        _client(bot_stack, "stu.dent", "not-the-password")


def test_role_changes_and_disabling_apply_to_the_next_call(bot_stack):
    """A role change ends the account's sessions (the bot reads the account at most once a second:
    past that second every call is refused with 401); signed in again, the account has its new role's
    pages only. A disabled account's session ends and it cannot sign in again."""
    accounts.add_user(bot_stack.sessions, "nurse.later", "nurse", PASSWORD, actor="test")
    client = _client(bot_stack, "nurse.later")
    assert "cannot use" not in _call(client, "review_skip")
    accounts.set_role(bot_stack.sessions, "nurse.later", "student", actor="test")
    time.sleep(1.5)  # past the bot's once-a-second read of the account
    assert "401" in _call(client, "review_skip")
    client = _client(bot_stack, "nurse.later")
    assert "Your role (student) cannot use the review page" in _call(client, "review_skip")
    assert "cannot use" not in _call(client, "new_conversation")
    accounts.set_disabled(bot_stack.sessions, "nurse.later", True, actor="test")
    time.sleep(1.5)
    assert "401" in _call(client, "new_conversation")
    with pytest.raises(ValueError, match="Could not login"):
        _client(bot_stack, "nurse.later")


def test_a_temporary_password_opens_no_page_until_it_is_replaced(bot_stack):
    """An account an admin created with a generated password is refused every page, called directly,
    until its owner chooses their own; the old password then no longer signs in."""
    temporary = "given-by-the-admin"
    accounts.add_user(bot_stack.sessions, "nurse.new", "nurse", temporary, actor="test", temporary=True)
    client = _client(bot_stack, "nurse.new", temporary)
    for endpoint in ("review_skip", "chat"):
        assert "Choose your own password first" in _call(client, endpoint)
    client.predict(temporary, "nurse-own-password", "nurse-own-password", api_name="/change_password")
    outcome = _call(client, "review_skip")
    assert "cannot use" not in outcome and "Choose your own" not in outcome, outcome
    with pytest.raises(ValueError, match="Could not login"):
        _client(bot_stack, "nurse.new", temporary)
    _client(bot_stack, "nurse.new", "nurse-own-password")


def test_repeated_wrong_passwords_lock_the_username(bot_stack):
    accounts.add_user(bot_stack.sessions, "locked.out", "student", PASSWORD, actor="test")
    for _ in range(5):  # CARELOOP_BOT_LOGIN_ATTEMPTS
        with pytest.raises(ValueError, match="Could not login"):
            _client(bot_stack, "locked.out", "guess-guess-guess")
    with pytest.raises(ValueError, match="Could not login"):  # the right password, too late
        _client(bot_stack, "locked.out")
    _client(bot_stack, "stu.dent")  # other accounts are not affected


def test_no_role_can_fetch_careloop_files_by_path_but_an_admin_export_downloads(bot_stack):
    """Gradio serves any file under ``allowed_paths`` to anyone signed in; the bot allows none of its
    home (run snapshots hold clinicians' corrections, exports hold every judgment)."""
    home = bot_stack.bot.log.parent
    secrets = [home / "runs" / "1" / "report.md", home / "exports" / "20260101T000000000000-dpo.zip"]
    for path in secrets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("clinician corrections")
    for username in ACCOUNTS:
        browser = httpx.Client(base_url=bot_stack.url, timeout=10)
        assert browser.post("/login", data={"username": username, "password": PASSWORD}).status_code == 200
        for path in secrets:
            for route in (f"/gradio_api/file={path}", f"/file={path}"):
                response = browser.get(route)
                assert response.status_code in (403, 404), f"{username} GET {route}: {response.status_code}"
                assert "clinician corrections" not in response.text
    archive = _client(bot_stack, "ad.min").predict("dpo", "jsonl", api_name="/admin_export")
    with zipfile.ZipFile(archive) as zipped:
        assert "manifest.json" in zipped.namelist()


def test_only_a_signed_in_admin_can_upload_files_and_no_larger_than_a_library_document(bot_stack):
    """Gradio's upload route stores any file of any size from anyone signed in (a student filling the
    disk would stop the outbox that keeps clinicians' judgments). Only the Library tab takes files:
    a signed-in admin's session may upload up to CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES (and the form
    around it), refused above it unread (413); students, nurses, physicians and signed-out callers are
    refused (403) as before, and every other upload path for everyone."""
    from support import LIBRARY_UPLOAD_LIMIT

    refused = (403, "careloop takes no file uploads.")
    notes = {"files": ("notes.md", b"# Notes\n\nHand washing prevents infection.")}
    for username in [None, *ACCOUNTS]:
        browser = httpx.Client(base_url=bot_stack.url, timeout=10)
        if username:
            assert browser.post("/login", data={"username": username, "password": PASSWORD}).status_code == 200
        for route in ("/gradio_api/upload", "/upload", "/gradio_api/upload/"):
            response = browser.post(route, files=notes)
            if username == "ad.min" and route == "/gradio_api/upload":
                assert response.status_code == 200, response.text
                (stored,) = response.json()
                assert Path(stored).name == "notes.md" and Path(stored).read_bytes().startswith(b"# Notes")
                Path(stored).unlink()
                continue
            assert (response.status_code, response.text) == refused, (
                f"{username} POST {route}: {response.status_code} {response.text[:200]}")
            assert "img-src 'self'" in response.headers["content-security-policy"]
        big = browser.post("/gradio_api/upload", files={"files": ("big.txt", b"a" * (2 * LIBRARY_UPLOAD_LIMIT))})
        if username == "ad.min":
            assert big.status_code == 413 and "CARELOOP_LIBRARY_MAX_DOCUMENT_BYTES" in big.text, big.text
        else:
            assert (big.status_code, big.text) == refused, "the size is no one else's business"


# Routes Gradio answers without sign-in, and what they give: the sign-in page and its assets, and
# who is signed in (nobody). Everything else must refuse an anonymous caller.
PUBLIC = {"/", "/favicon.ico", "/theme.css", "/robots.txt", "/manifest.json", "/gradio_api/theme.css",
          "/gradio_api/runs", "/gradio_api/user", "/gradio_api/token", "/gradio_api/app_id",
          "/gradio_api/startup-events"}
REFUSED = {302, 401, 403, 404, 405, 422}  # 404 / 422: refused before the path or body made sense


def _routes(stack) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of the bot's server, built the way `careloop bot` builds it."""
    from gradio.routes import App

    from bot.app import build, open_services, server_options

    services = open_services(stack.settings())
    try:
        app = App.create_app(build(services), app_kwargs=server_options())
    finally:
        services.close()
    found = []
    for route in app.routes:
        # Gradio mounts its API as an included router; its routes are listed by their effective paths.
        inner = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        found += [(method, r.path) for r in inner for method in getattr(r, "methods", None) or {"GET"}]
    return sorted(set(found))


def test_every_http_route_refuses_anonymous_callers_but_the_sign_in_page(bot_stack):
    routes = _routes(bot_stack)
    assert len(routes) > 50 and ("POST", "/gradio_api/queue/join") in routes, "the route list looks incomplete"
    with httpx.Client(base_url=bot_stack.url, timeout=5) as anonymous:
        for method, path in routes:
            if path == "/gradio_api/heartbeat/{session_hash}":
                continue  # holds an event stream open; it carries nothing but "ALIVE"
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            response = anonymous.request(method, concrete, json={} if method == "POST" else None)
            assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text[:200]}"
            if path.rstrip("/") in PUBLIC or path == "/":
                continue
            assert response.status_code in REFUSED, f"anonymous {method} {path}: {response.status_code}"
    # FastAPI's own schema and docs pages are switched off (they listed every route to anyone).
    assert {httpx.get(f"{bot_stack.url}{path}", timeout=5).status_code for path in ("/openapi.json", "/docs")} == {404}


@pytest.mark.parametrize("username", sorted(ACCOUNTS))
def test_no_http_route_fails_or_hands_files_to_a_signed_in_user(bot_stack, username):
    """Every route of the bot's server, signed in as each role: no 5xx, and no route gives what the
    role may not have (careloop's files, uploads; page data is the handlers', swept above). Gradio's
    "call" routes are refused: they answered an unknown endpoint with a 500."""
    routes = _routes(bot_stack)
    with httpx.Client(base_url=bot_stack.url, timeout=10) as browser:
        assert browser.post("/login", data={"username": username, "password": PASSWORD}).status_code == 200
        for method, path in routes:
            if path in ("/gradio_api/heartbeat/{session_hash}", "/logout", "/gradio_api/logout"):
                continue  # an endless "ALIVE" stream; signing out (swept in test_sessions)
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            # Streamed: an event-stream route may hold its stream open; the status is what counts here.
            with browser.stream(method, concrete, json={} if method == "POST" else None) as response:
                status = response.status_code
            assert status < 500, f"{username} {method} {path}: {status}"
            if "upload" in path and method == "POST":  # an admin's empty upload: Gradio's 400, no file
                expected = 400 if username == "ad.min" and path == "/gradio_api/upload" else 403
                assert status == expected, f"{username} {method} {path}: {status}"
            if "/call/" in path:  # Gradio's curl API: a 500 and a traceback for an unknown endpoint
                assert status == 404, f"{username} {method} {path}: {status}"
        assert browser.get("/gradio_api/user").json() == username, "still signed in after the sweep"


def test_security_headers_on_every_page(bot_stack):
    for path in ("/", "/config", "/gradio_api/info"):
        headers = httpx.get(f"{bot_stack.url}{path}", timeout=5).headers
        assert "img-src 'self' data: blob:" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


# Every event handler of the page, by the page it belongs to. The browser calls unnamed handlers
# (api_name=False: a thumbs click, a confirm dialog, the status timer) by their index, so each must
# check the role itself. None: no page's data (the page's own start-up, the status line, hiding a form).
PAGE_OF_HANDLER = {"ask": "chat", "again": "chat", "history_choices": "chat", "stopped": "chat", "fresh": "chat",
                   "reopen": "chat", "liked": "chat", "rate": "chat",
                   "open_review": "review", "submit_judgment": "review", "pass_item": "review",
                   "amend_last": "review",
                   "overview": "admin", "refreshed_runs": "admin", "show_report": "admin", "handler": "admin",
                   "confirmed": "admin", "start_training": "admin", "export": "admin", "followed_runs": "admin",
                   "show_library": "admin", "add_to_library": "admin",
                   "remove_from_library": "admin", "show_audit": "admin", "refreshed": "admin",
                   "on_load": None, "tick": None, "<lambda>": None, "change_password": None}


def _handlers(stack) -> dict[int, tuple[str, int]]:
    """fn_index -> (handler name, number of inputs) for every event with a Python handler."""
    from bot.app import build, open_services

    services = open_services(stack.settings())
    try:
        blocks = build(services)
    finally:
        services.close()
    return {index: (fn.fn.__name__, len(fn.inputs)) for index, fn in blocks.fns.items() if fn.fn is not None}


EVENT_DATA = {"liked": {"index": 1, "value": "an answer", "liked": False}}  # what a thumbs click sends


def _run(browser: httpx.Client, fn_index: int, inputs: int, event_data: dict | None, data: list | None = None) -> str:
    """Call handler ``fn_index`` the way the page does (queue/join, then its event stream), with
    ``data`` or a blank for each input; "ok", or the error the page would show."""
    session_hash = uuid.uuid4().hex[:11]
    joined = browser.post("/gradio_api/queue/join", json={"data": data or [None] * inputs, "fn_index": fn_index,
                                                          "session_hash": session_hash, "event_data": event_data})
    if joined.status_code != 200:
        return f"HTTP {joined.status_code}: {joined.text[:200]}"
    with browser.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                output = message.get("output") or {}
                return "ok" if message.get("success") else f"error: {output.get('error')}"
    return "the event stream ended without an answer"


def test_each_role_reaches_exactly_its_pages_through_every_handler(bot_stack):
    handlers = _handlers(bot_stack)
    tracebacks = bot_stack.bot.log.read_text().count("Traceback")
    unknown = {name for name, _ in handlers.values()} - set(PAGE_OF_HANDLER)
    assert not unknown, f"classify these handlers in PAGE_OF_HANDLER (which page's data they touch): {unknown}"
    for username, role in ACCOUNTS.items():
        with httpx.Client(base_url=bot_stack.url, timeout=60) as browser:
            assert browser.post("/login", data={"username": username, "password": PASSWORD}).status_code == 200
            served = {d["id"]: d for d in browser.get("/config").json()["dependencies"]}
            for index, (name, inputs) in handlers.items():
                assert len(served[index]["inputs"]) == inputs, f"handler {index} ({name}) is another on the server"
                outcome = _run(browser, index, inputs, EVENT_DATA.get(name))
                page = PAGE_OF_HANDLER[name]
                if page is None or page in ALLOWED[role]:  # blank input gets a message, never a crash
                    assert outcome == "ok", f"{role} calling {name} (#{index}): {outcome}"
                else:
                    assert outcome == f"error: Your role ({role}) cannot use the {page} page.", (
                        f"{role} calling {name} (#{index}): {outcome}")
    # Refusals and blank input are logged as one line each; a traceback would mean a crash (and a
    # traceback per refusal would bury real ones).
    assert bot_stack.bot.log.read_text().count("Traceback") == tracebacks, bot_stack.bot.log.read_text()[-3000:]


def test_a_refused_call_to_add_documents_deletes_no_upload(bot_stack):
    """Issue 31, 9: a student calling the library's add handler with the cache path of an admin's upload
    was refused, and the file deleted anyway (its clean-up ran first). Refused now before anything."""
    upload = bot_stack.home / "bot" / "gradio-cache" / uuid.uuid4().hex / "ward-notes.md"
    upload.parent.mkdir(parents=True)
    upload.write_text("# Ward notes\n\nHand hygiene before and after each patient.")
    (index,) = [index for index, (name, _) in _handlers(bot_stack).items() if name == "add_to_library"]
    with httpx.Client(base_url=bot_stack.url, timeout=60) as browser:
        assert browser.post("/login", data={"username": "stu.dent", "password": PASSWORD}).status_code == 200
        file_data = {"path": str(upload), "orig_name": upload.name, "meta": {"_type": "gradio.FileData"}}
        outcome = _run(browser, index, 1, None, data=[[file_data]])
    assert outcome == "error: Your role (student) cannot use the admin page.", outcome
    assert upload.is_file(), "the admin's upload is still there"
