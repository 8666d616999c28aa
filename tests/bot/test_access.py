"""Sign-in and role checks of the bot (bot.access) on a real database."""

from __future__ import annotations

import re
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


def test_the_sign_in_page_is_told_of_a_lock_and_for_how_long_alike_for_unknown_names(sessions):
    """Issue 19, 10: after the last allowed wrong password the right one was refused with Gradio's
    "Incorrect Credentials" and no word of the lock. The refusal now says so and for how long, in
    the same words whether or not the username is an account."""
    access = Access(sessions, max_failures=3, lockout_seconds=300)
    accounts.add_user(sessions, "nurse.a", "nurse", PASSWORD, actor="test")
    said = {}
    for name in ("nurse.a", "no.such.nurse"):
        said[name] = [access.check(name, "wrong-password").message for _ in range(3)]
        said[name].append(access.check(name, PASSWORD).message)
    assert said["nurse.a"] == said["no.such.nurse"], "a refusal must not tell whether the username exists"
    first, second, third, locked = said["nurse.a"]
    assert first == "Incorrect username or password. 2 more failed attempts will lock this username for 5 minutes."
    assert second == "Incorrect username or password. 1 more failed attempt will lock this username for 5 minutes."
    assert third == ("Incorrect username or password. After 3 failed sign-ins this username is locked for "
                     "5 minutes.")
    assert re.fullmatch(r"This username is locked after 3 failed sign-ins: try again in (5 minutes|29\d seconds)\. "
                        r"\(Until then even the right password is refused\.\)", locked), locked
    assert access.check("nurse.a", PASSWORD, client="198.51.100.7").ok, "only the guessing address is locked"


def test_a_lock_holds_for_the_failing_address_only(access):
    for _ in range(3):
        assert not access.login("ad.min", "wrong-password", client="203.0.113.9")
    assert not access.login("ad.min", PASSWORD, client="203.0.113.9"), "locked for the guessing address"
    assert access.login("ad.min", PASSWORD, client="198.51.100.7"), "the admin elsewhere is not locked out"


def test_an_address_that_keeps_failing_is_throttled_for_every_name(sessions):
    access = Access(sessions, max_failures=3, lockout_seconds=60, address_failures=5)
    accounts.add_user(sessions, "stu.dent", "student", PASSWORD, actor="test")
    for number in range(5):
        assert not access.login(f"guess{number}", "wrong-password", client="203.0.113.9")
    assert not access.login("stu.dent", PASSWORD, client="203.0.113.9")
    assert access.login("stu.dent", PASSWORD, client="198.51.100.7")


def test_invalid_names_are_refused_unhashed_and_the_tables_stay_bounded(sessions, monkeypatch):
    """Each invalid name is refused as such before any password check: a checked name would end in
    `login` or `login_failed` (what the bot logs for every Argon2 check), and none does."""
    from structlog.testing import capture_logs

    access = Access(sessions, max_failures=3, lockout_seconds=60)
    names = ("a" * 1_000_000, "", "x", "../../etc", "name with spaces", "ünï")
    with capture_logs() as events:
        for name in names:
            assert not access.login(name, PASSWORD)
    assert [e["event"] for e in events] == ["login_refused"] * len(names), events
    assert all(e["reason"] == "not a valid username" and "user" not in e for e in events)  # never logged whole
    monkeypatch.setattr(Access, "MAX_TRACKED", 20)  # a small cap, so a few real Argon2 checks overflow it
    for number in range(60):
        access.login(f"user{number}", "wrong-password", client=f"10.0.0.{number}")
    assert len(access._failures) <= 20 and len(access._by_address) <= 20


def test_login_async_hashes_off_the_event_loop(access):
    import asyncio

    asyncio.run(_ticks_while_signing_in(access))


async def _ticks_while_signing_in(access):
    import asyncio

    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(*(access.login_async("nurse.a", PASSWORD) for _ in range(4)))
    elapsed = time.monotonic() - started
    task.cancel()
    assert all(results)
    assert ticks >= 0.3 * elapsed / 0.01, f"the loop ticked {ticks} times in {elapsed:.2f} s"
