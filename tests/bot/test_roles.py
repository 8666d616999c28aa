"""Role enforcement on the server: every endpoint of the running bot, called directly through
gradio_client (as a script or a curious student would), for every role. A hidden tab is not the
protection; the refusal is."""

from __future__ import annotations

import httpx
import pytest
from conftest import ACCOUNTS, PASSWORD
from gradio_client import Client

from careloop import accounts

PAGE_OF = {"chat": "chat", "regenerate": "chat", "new_conversation": "chat", "open_conversation": "chat",
           "rate": "chat", "review_next": "review", "review_submit": "review", "review_skip": "review",
           "admin_overview": "admin", "admin_runs": "admin", "admin_report": "admin", "admin_act": "admin",
           "admin_train": "admin", "admin_export": "admin"}
ALLOWED = {"student": {"chat"}, "nurse": {"chat", "review"}, "physician": {"chat", "review"},
           "admin": {"chat", "admin"}}


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
    accounts.add_user(bot_stack.sessions, "nurse.later", "nurse", PASSWORD, actor="test")
    client = _client(bot_stack, "nurse.later")
    assert "cannot use" not in _call(client, "review_skip")
    accounts.set_role(bot_stack.sessions, "nurse.later", "student", actor="test")
    assert "Your role (student) cannot use the review page" in _call(client, "review_skip")
    accounts.set_disabled(bot_stack.sessions, "nurse.later", True, actor="test")
    assert "disabled" in _call(client, "chat")


def test_repeated_wrong_passwords_lock_the_username(bot_stack):
    accounts.add_user(bot_stack.sessions, "locked.out", "student", PASSWORD, actor="test")
    for _ in range(5):  # CARELOOP_BOT_LOGIN_ATTEMPTS
        with pytest.raises(ValueError, match="Could not login"):
            _client(bot_stack, "locked.out", "guess-guess-guess")
    with pytest.raises(ValueError, match="Could not login"):  # the right password, too late
        _client(bot_stack, "locked.out")
    _client(bot_stack, "stu.dent")  # other accounts are not affected
