"""Limits on chat (issue 18, 4): one account gets one answer at a time and a bounded number a
minute, with a message saying so; the bot's queue is bounded; a page's state belongs to its account
(9); a username is one account however it is typed (13). On the shared stack's real serving, and
on `careloop bot` processes (the limited bot has small limits)."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid

import httpx
import pytest
from gradio_client.utils import apply_diff
from processes import wait_for
from support import PASSWORD

from adapters.rollout import open_client
from bot.access import Viewer
from bot.chat import Chat, ChatLimits, Conversation
from bot.errors import UserError
from careloop import accounts
from feedback.producer import FeedbackProducer


def _account(stack, prefix: str, role: str = "student") -> str:
    username = f"{prefix}.{uuid.uuid4().hex[:6]}"
    accounts.add_user(stack.sessions, username, role, PASSWORD, actor="test")
    return username


def _sign_in(url: str, username: str) -> httpx.Client:
    browser = httpx.Client(base_url=url, timeout=60)
    response = browser.post("/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return browser


def _call(browser: httpx.Client, api_name: str, data: list, session_hash: str | None = None,
          joined: threading.Event | None = None, started: threading.Event | None = None) -> dict:
    """Call the page's ``api_name`` handler the way the page does (queue/join, then its event
    stream): {"status": HTTP status of the join, "error": ..., "warnings": [...], "output": [...]}.
    ``joined`` is set once the request is in the queue, ``started`` once it runs."""
    config = browser.get("/config")
    assert "dependencies" in config.json(), (config.status_code, config.text[:500])
    dependencies = config.json()["dependencies"]
    fn_index = next(d["id"] for d in dependencies if d.get("api_name") == api_name)
    session_hash = session_hash or uuid.uuid4().hex[:11]
    response = browser.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                            "session_hash": session_hash})
    result: dict = {"status": response.status_code, "warnings": [], "output": None, "error": None}
    if joined is not None:
        joined.set()
    if response.status_code != 200:
        result["error"] = response.json().get("detail")
        return result
    streamed: list | None = None  # a stream's outputs, rebuilt from its diffs as gradio_client does
    shown: list = []  # what the page shows per output: an update without a value (gr.skip()) keeps it
    with browser.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_starts" and started is not None:
                started.set()
            if message.get("msg") == "log":
                result["warnings"].append(message.get("log"))
            if message.get("msg") not in ("process_generating", "process_completed"):
                continue
            output = message.get("output") or {}
            data = output.get("data") or []
            if message["msg"] == "process_generating" and streamed is not None:
                data = streamed = [apply_diff(old, diff) for old, diff in zip(streamed, data, strict=True)]
            elif message["msg"] == "process_generating":
                streamed = list(data)
            shown = [_shown(shown[i] if i < len(shown) else None, value) for i, value in enumerate(data)]
            if message["msg"] == "process_completed":
                result["output"], result["error"] = (shown if output.get("data") else None), output.get("error")
                return result
    pytest.fail(f"the event stream of {api_name} ended without an answer")


def _shown(before, value):
    if isinstance(value, dict) and value.get("__type__") == "update":
        return value.get("value", before)
    return value


# ----- one answer at a time, and a bounded rate (the page's logic, on real serving) -----

@pytest.fixture
def limited_chat(bot_stack, tmp_path):
    feedback = FeedbackProducer(bot_stack.settings(home=tmp_path / "bot"), flush_interval=0.1)
    client = open_client(bot_stack.settings())
    yield Chat(client, feedback, bot_stack.sessions, max_chars=4000, limits=ChatLimits(per_minute=3, concurrent=1))
    client.close()
    feedback.close()


def test_an_account_gets_one_answer_at_a_time_and_a_few_a_minute(limited_chat):
    student, other = Viewer("stu.dent", "student"), Viewer("stu.other", "student")
    first, second = Conversation(owner=student.username), Conversation(owner=student.username)
    streaming = limited_chat.answer(student, first, "What is asthma?")
    next(streaming)  # the answer is being written
    with pytest.raises(UserError, match="still being written"):
        next(limited_chat.answer(student, second, "What is anaemia?"))
    assert second.turns == [], "a refused message adds nothing"
    for _ in limited_chat.answer(other, Conversation(owner=other.username), "What is a fever?"):
        pass  # another account is not held up
    streaming.close()  # Stop: the slot is free again
    for _ in limited_chat.answer(student, second, "What is anaemia?"):
        pass
    for _ in limited_chat.regenerate(student, second):  # a regeneration is an answer too: the third this minute
        pass
    kept = list(second.turns)
    with pytest.raises(UserError, match=r"sent 3 messages in the last minute.*wait \d+ s"):
        next(limited_chat.regenerate(student, second))
    assert second.turns == kept, "a refused regeneration keeps the answer it would have replaced"


# ----- the running bot: the message on the page, the bounded queue -----

def test_the_page_says_when_an_account_sends_too_fast_and_keeps_the_message(bot_stack, limited_bot):
    username = _account(bot_stack, "stu.rate")
    browser = _sign_in(limited_bot.url, username)
    for n in range(3):
        sent = _call(browser, "chat", [f"Question {n}: what is asthma?", None])
        assert sent["error"] is None and not sent["warnings"], sent
        assert sent["output"][2] == "", "a sent message leaves the input box"
    refused = _call(browser, "chat", ["One more: what is asthma?", None])
    assert refused["error"] is None, refused
    assert any("sent 3 messages in the last minute" in w for w in refused["warnings"]), refused["warnings"]
    assert refused["output"][2] == "One more: what is asthma?", "the refused message stays in the input box"


def test_a_full_queue_tells_the_caller_and_loses_nothing_else(bot_stack, limited_bot):
    """The limited bot runs 4 chats at once (CARELOOP_MAX_BATCH=1) and lets 1 wait: with serving
    frozen (SIGSTOP) so that answers hang, a sixth request is refused with Gradio's message (503,
    "Queue is full"); once serving runs again every accepted one is answered."""
    browsers = [_sign_in(limited_bot.url, _account(bot_stack, f"stu.q{n}")) for n in range(6)]
    results: list[dict | None] = [None] * 5
    threads: list[threading.Thread] = []
    os.kill(bot_stack.server.process.pid, signal.SIGSTOP)
    try:
        for n in range(5):
            joined, started = threading.Event(), threading.Event()

            def ask(n: int = n, joined: threading.Event = joined, started: threading.Event = started) -> None:
                results[n] = _call(browsers[n], "chat", [f"Question {n}: what is asthma?", None],
                                   joined=joined, started=started)

            threads.append(threading.Thread(target=ask))
            threads[-1].start()
            assert (started if n < 4 else joined).wait(30), f"request {n} neither ran nor queued"
        sixth = _call(browsers[5], "chat", ["Question 5: what is asthma?", None])
    finally:
        os.kill(bot_stack.server.process.pid, signal.SIGCONT)
    for thread in threads:
        thread.join(timeout=120)
    assert sixth["status"] == 503 and "Queue is full" in str(sixth["error"]), sixth
    for n, result in enumerate(results):
        assert result is not None and result["error"] is None and result["output"][2] == "", (n, result)


# ----- a page's state is its account's (9) -----

def test_another_accounts_session_hash_gets_nothing_of_its_state(bot_stack):
    first, second = _account(bot_stack, "stu.first"), _account(bot_stack, "stu.second")
    own_browser, other_browser = _sign_in(bot_stack.url, first), _sign_in(bot_stack.url, second)
    session_hash = uuid.uuid4().hex[:11]
    asked = _call(own_browser, "chat", ["A private question about my asthma?", None], session_hash)
    assert asked["error"] is None, asked
    for api_name, data in (("regenerate", [None]), ("chat", ["And mine?", None]),
                           ("rate", [None, 1, "", "up", None, ""])):
        stolen = _call(other_browser, api_name, data, session_hash)
        assert stolen["error"] and "belongs to another account" in stolen["error"], (api_name, stolen)
        assert "private question" not in json.dumps(stolen["output"]), (api_name, stolen)
    again = _call(own_browser, "regenerate", [None], session_hash)
    assert again["error"] is None and "private question" in json.dumps(again["output"]), again
    assert "state_of_another_account" in bot_stack.bot.log.read_text()


# ----- one spelling of a username (13) -----

def test_a_mixed_case_username_is_one_account_everywhere(bot_stack):
    suffix = uuid.uuid4().hex[:6]
    user = accounts.add_user(bot_stack.sessions, f"Stu.Case{suffix}", "student", PASSWORD, actor="test")
    assert user.username == f"stu.case{suffix}"
    browser = _sign_in(bot_stack.url, f"  STU.Case{suffix}")
    asked = _call(browser, "chat", ["What is asthma?", None])
    assert asked["error"] is None and asked["output"][2] == "", asked
    assert _call(browser, "new_conversation", [])["error"] is None
    with pytest.raises(accounts.AccountError, match="taken"):
        accounts.add_user(bot_stack.sessions, f"stu.CASE{suffix}", "student", PASSWORD, actor="test")
    accounts.set_role(bot_stack.sessions, f"Stu.Case{suffix}", "nurse", actor="test")
    # The role change ends the session signed in before it (issue 31, 3), within the bot's once-a-second
    # read of the account; signing in again with yet another spelling gets the changed account.
    wait_for(lambda: browser.get("/config").status_code == 401, timeout=5, message="the old session to end")
    browser = _sign_in(bot_stack.url, f"stu.CASE{suffix} ")
    assert _call(browser, "review_next", [None])["error"] is None, "the role change reached the same account"
