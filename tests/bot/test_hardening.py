"""The bot's server against hostile web pages and clients (issue 18, items 1-4 and the suspected
logout), on the running `careloop bot` of the shared stack: other sites' pages get nothing, a login
flood stalls nothing and locks no one out, only the routes the page uses are served, oversized
requests are refused unread, and nothing but the page's own Sign out form signs anyone out."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from support import PASSWORD, page_csrf_token

PUBLIC_HOST = "bot.example.org"  # as behind a TLS reverse proxy that passes the public Host header
EVIL = "https://evil.example"


def _sign_in(url: str, username: str, **headers: str) -> httpx.Client:
    browser = httpx.Client(base_url=url, timeout=30)
    response = browser.post("/login", data={"username": username, "password": PASSWORD}, headers=headers)
    assert response.status_code == 200, response.text
    return browser


def test_other_sites_pages_get_no_cors_and_nothing_signed_in(bot_stack):
    admin = httpx.Client(base_url=bot_stack.url, timeout=30)
    signed_in = admin.post("/login", data={"username": "ad.min", "password": PASSWORD})
    assert signed_in.status_code == 200
    cookies = signed_in.headers.get_list("set-cookie")
    assert cookies and all("samesite=lax" in cookie.lower() for cookie in cookies), cookies
    proxied = {"Host": PUBLIC_HOST}
    preflight = admin.options("/gradio_api/token", headers={**proxied, "Origin": EVIL,
                                                            "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 403 and "another site" in preflight.text, preflight
    assert "access-control-allow-origin" not in preflight.headers
    for method, path, body in (("GET", "/gradio_api/token", None), ("GET", "/config", None),
                               ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": 0,
                                                                   "session_hash": "x"})):
        response = admin.request(method, path, json=body, headers={**proxied, "Origin": EVIL})
        assert response.status_code == 403, f"{method} {path}: {response.status_code} {response.text[:200]}"
        assert "access-control-allow-origin" not in response.headers
        assert "refused" in response.text.lower() and "token" not in response.text
    for origin in ("null", "https://bot.example.org.evil.example", "http://127.0.0.1:1"):
        assert admin.get("/config", headers={**proxied, "Origin": origin}).status_code == 403, origin
    # The bot's own origin, through the proxy and directly, works as before.
    assert admin.get("/config", headers={**proxied, "Origin": f"https://{PUBLIC_HOST}"}).status_code == 200
    assert admin.get("/config", headers={"Origin": bot_stack.url}).status_code == 200
    assert admin.get("/config").status_code == 200


def _login(url: str, username: str, address: str, password: str = "wrong-password-123") -> int:
    return httpx.post(f"{url}/login", data={"username": username, "password": password},
                      headers={"X-Forwarded-For": address}, timeout=60).status_code


def _latency(url: str, samples: int = 12) -> float:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        assert httpx.get(f"{url}/robots.txt", timeout=60).status_code == 200
        times.append(time.perf_counter() - started)
        time.sleep(0.05)
    return statistics.median(times)


def test_a_login_flood_stalls_nothing_and_locks_no_one_out(bot_stack):
    before = _latency(bot_stack.url)
    stop = threading.Event()
    attacker = "203.0.113.66"
    sent = [0]

    def flood() -> None:
        while not stop.is_set():
            name = "ad.min" if sent[0] % 2 else f"x{uuid.uuid4().hex[:12]}"
            sent[0] += 1
            _login(bot_stack.url, name, attacker)

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
    for thread in flooders:
        thread.start()
    try:
        time.sleep(1.0)
        during = _latency(bot_stack.url)
        # The admin, from their own address, signs in while the attacker floods (with their name too).
        assert _login(bot_stack.url, "ad.min", "198.51.100.7", PASSWORD) == 200
    finally:
        stop.set()
        for thread in flooders:
            thread.join(60)
    assert sent[0] > 20, sent
    assert during < max(10 * before, 0.15), f"/robots.txt took {during:.3f} s during the flood, {before:.3f} s before"
    assert _login(bot_stack.url, "ad.min", attacker, PASSWORD) != 200, "the flooding address is throttled"


def test_megabyte_usernames_are_refused_unhashed_and_not_logged(bot_stack):
    log = bot_stack.bot.log
    size = log.stat().st_size
    for _ in range(5):
        response = httpx.post(f"{bot_stack.url}/login", data={"username": "a" * 1_000_000, "password": "x" * 12},
                              headers={"X-Forwarded-For": "203.0.113.77"}, timeout=60)
        assert response.status_code in (400, 413), response.status_code
    assert log.stat().st_size - size < 20_000, "a megabyte username reached the log"


PROBE = b"careloop-upload-probe:"


def _probe_files(since: float) -> list[Path]:
    """Files in the temp directory written since ``since`` that hold the probe's bytes."""
    found = []
    for root, _, files in os.walk(tempfile.gettempdir()):
        if root.count(os.sep) - tempfile.gettempdir().count(os.sep) > 3:
            continue
        for name in files:
            path = Path(root) / name
            try:
                if path.stat().st_mtime >= since and path.stat().st_size > 1_000_000:
                    with path.open("rb") as handle:
                        if handle.read(len(PROBE)) == PROBE:
                            found.append(path)
            except OSError:
                continue
    return found


def test_only_the_routes_the_page_uses_are_served(bot_stack):
    started = time.time() - 1
    browser = _sign_in(bot_stack.url, "stu.dent")
    big = PROBE * (20_000_000 // len(PROBE))
    response = browser.post("/gradio_api/process_recording", files={"data": ("r.wav", big, "audio/wav")})
    assert response.status_code in (403, 404), f"{response.status_code} {response.text[:200]}"
    assert PROBE not in response.content
    for method, path in (("GET", "/gradio_api/runs"), ("GET", "/gradio_api/token"), ("GET", "/gradio_api/deep_link"),
                         ("POST", "/gradio_api/component_server"), ("GET", "/gradio_api/upload_progress"),
                         ("GET", "/gradio_api/proxy=http://example.org/"), ("POST", "/gradio_api/vibe-code"),
                         ("POST", "/gradio_api/run/chat"), ("POST", "/gradio_api/api/chat"),
                         ("GET", "/gradio_api/queue/status"), ("POST", "/gradio_api/stream/x"),
                         ("GET", "/monitoring"), ("PUT", "/config")):
        assert browser.request(method, path).status_code in (403, 404), f"{method} {path}"
    assert browser.get("/config").status_code == 200 and browser.get("/gradio_api/info").status_code == 200
    time.sleep(1)
    assert not _probe_files(started), "the refused upload left files in the temp directory"


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def test_oversized_chat_requests_are_refused_before_they_are_read(bot_stack):
    """Issue 18, 4: a 30 MB chat message was parsed whole (57 MB of bot memory each) before the page
    refused it. Now a body over CARELOOP_BOT_MAX_REQUEST_BYTES gets 413 with the reason, and one that
    declares no length 411, before any of it is read; the chat box itself stops at the message limit."""
    browser = _sign_in(bot_stack.url, "stu.dent")
    config = browser.get("/config").json()
    chat_input = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "chat-input")
    assert chat_input["props"]["max_length"] == 4000, "the chat box takes at most CARELOOP_BOT_MAX_MESSAGE_CHARS"
    chat = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "chat")
    pid = bot_stack.bot.process.pid
    before = _rss_bytes(pid)
    message = "What is asthma? " * (30_000_000 // 16)
    for _ in range(3):
        response = browser.post("/gradio_api/queue/join", json={"data": [message, None], "fn_index": chat,
                                                                "session_hash": uuid.uuid4().hex[:11]})
        assert response.status_code == 413, f"{response.status_code} {response.text[:200]}"
        assert "accepts at most 1,048,576" in response.text and "What is asthma" not in response.text
    chunked = browser.post("/gradio_api/queue/join", content=iter([b'{"data": ["', b"a" * 2_000_000, b'"]}']),
                           headers={"Content-Type": "application/json"})
    assert chunked.status_code == 411 and "Content-Length" in chunked.text, chunked.status_code
    grown = _rss_bytes(pid) - before
    assert grown < 20_000_000, f"the bot grew by {grown / 1e6:.0f} MB refusing three 30 MB messages"
    assert browser.get("/config").status_code == 200, "still signed in and served"
    for route in ("/gradio_api/cancel", "/gradio_api/reset", "/login"):
        refused = browser.post(route, content=b"x" * 2_000_000)
        assert refused.status_code == 413, (route, refused.status_code)


def test_only_the_pages_own_sign_out_form_signs_out(bot_stack):
    """Issue 18 (suspected, confirmed): Gradio's `GET /logout` ended every session of the account,
    so a student's `![x](/logout)` on a nurse's review page (an image of careloop's own origin, which
    the Content-Security-Policy allows) signed the nurse out. Now signing out is a POST carrying the
    page's CSRF token, and the review page shows markdown images in student text as text."""
    from bot.rendering import literal, untrusted

    nurse, other_tab = _sign_in(bot_stack.url, "nurse.b"), _sign_in(bot_stack.url, "nurse.b")
    colleague = _sign_in(bot_stack.url, "dr.p")
    for attempt in (lambda: nurse.get("/logout"), lambda: nurse.get("/logout", params={"all_session": "true"}),
                    lambda: nurse.post("/logout"), lambda: nurse.post("/logout", data={"csrf_token": "0" * 64}),
                    lambda: nurse.post("/logout", data={"csrf_token": page_csrf_token(colleague)}),
                    lambda: nurse.post("/logout", data={"csrf_token": page_csrf_token(nurse)},
                                       headers={"Origin": EVIL})):
        assert attempt().status_code in (403, 404)
        assert nurse.get("/config").status_code == 200, "the nurse is still signed in"
    signed_out = nurse.post("/logout", data={"csrf_token": page_csrf_token(nurse)})
    assert signed_out.status_code == 302
    assert nurse.get("/config").status_code == 401 and other_tab.get("/config").status_code == 401
    assert colleague.get("/config").status_code == 200
    question = "Is this rash bad? ![x](/logout) ![y][1]\n\n[1]: /logout"
    for shown in (literal(question), untrusted(question)):  # as a student wrote it; as a model repeats it
        assert "![" not in shown and "]" not in shown.replace("\\]", ""), f"an image or link is left: {shown!r}"
        assert shown.replace("\\", "") == question, "shown as typed once Markdown takes its escapes away"
