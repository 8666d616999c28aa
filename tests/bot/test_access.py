"""Sign-in and role checks of the bot (bot.access) on a real database."""

from __future__ import annotations

import time

import pytest

from bot.access import PAGES, Access, Refused
from careloop import accounts

PASSWORD = "correct-horse-battery"
# Long enough that three Argon2 checks (about 0.5 s each here, more on a busy machine) fit in it.
LOCKOUT = 5.0


@pytest.fixture
def access(sessions):
    for name, role in (("stu.dent", "student"), ("nurse.a", "nurse"), ("dr.p", "physician"), ("ad.min", "admin")):
        accounts.add_user(sessions, name, role, PASSWORD, actor="test")
    return Access(sessions, max_failures=3, lockout_seconds=LOCKOUT)


def test_login_takes_the_right_password_only(access, sessions):
    assert access.login("stu.dent", PASSWORD)
    assert access.login("  Stu.Dent ", PASSWORD), "usernames are case- and space-insensitive"
    assert not access.login("stu.dent", PASSWORD.upper())
    assert not access.login("stu.dent", "")
    assert not access.login("nobody", PASSWORD)
    accounts.set_disabled(sessions, "stu.dent", True, actor="test")
    assert not access.login("stu.dent", PASSWORD)


def test_failed_logins_lock_the_username_for_a_while(access):
    first = time.monotonic()
    for _ in range(3):
        assert not access.login("nurse.a", "wrong-password")
    assert not access.login("nurse.a", PASSWORD), "locked: even the right password is refused"
    assert access.login("dr.p", PASSWORD), "other usernames are not locked"
    time.sleep(max(0.0, LOCKOUT + 0.1 - (time.monotonic() - first)))
    assert access.login("nurse.a", PASSWORD), "the lock lapses once the window has passed"


@pytest.mark.parametrize(("username", "pages"), [("stu.dent", {"chat"}), ("nurse.a", {"chat", "review"}),
                                                 ("dr.p", {"chat", "review"}), ("ad.min", {"chat", "admin"})])
def test_each_role_may_open_its_pages_only(access, username, pages):
    for page in PAGES:
        if page in pages:
            assert access.require(username, page).username == username
        else:
            with pytest.raises(Refused, match=f"cannot use the {page} page"):
                access.require(username, page)


def test_no_or_a_vanished_account_is_refused(access, sessions):
    with pytest.raises(Refused, match="You are signed out"):
        access.require(None, "chat")
    with pytest.raises(Refused, match="disabled or no longer exists"):
        access.require("ghost", "chat")
    accounts.set_disabled(sessions, "ad.min", True, actor="test")
    with pytest.raises(Refused, match="disabled"):
        access.require("ad.min", "admin")
