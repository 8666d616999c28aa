"""Accounts: Argon2 password hashing, login, roles, disabling, and the `careloop users` commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from careloop import accounts, audit


def test_passwords_are_hashed_and_checked(sessions):
    user = accounts.add_user(sessions, "nurse.kim", "nurse", "correct horse battery", actor="admin")
    assert user.password_hash.startswith("$argon2id$") and "correct horse" not in user.password_hash
    assert accounts.authenticate(sessions, "nurse.kim", "correct horse battery").role == "nurse"
    assert accounts.authenticate(sessions, "nurse.kim", "wrong password!!") is None
    assert accounts.authenticate(sessions, "nobody", "correct horse battery") is None
    accounts.set_disabled(sessions, "nurse.kim", True, actor="admin")
    assert accounts.authenticate(sessions, "nurse.kim", "correct horse battery") is None
    accounts.set_disabled(sessions, "nurse.kim", False, actor="admin")
    accounts.set_role(sessions, "nurse.kim", "physician", actor="admin")
    assert accounts.authenticate(sessions, "nurse.kim", "correct horse battery").role == "physician"
    with sessions() as session:
        actions = [(e.action, e.details) for e in reversed(audit.recent(session))]
    assert actions == [("user.add", {"role": "nurse", "temporary_password": False}), ("user.disable", {}),
                       ("user.enable", {}),
                       ("user.set_role", {"before": "nurse", "after": "physician"})]


@pytest.mark.parametrize("username, role, password, message", [
    ("ab", "student", "long enough pw", "username 'ab' is invalid"),
    ("Bad Name", "student", "long enough pw", "is invalid"),
    ("student.ok", "doctor", "long enough pw", "role 'doctor' is unknown"),
    ("student.ok", "student", "short", "at least 10 characters"),
])
def test_bad_account_input(sessions, username, role, password, message):
    with pytest.raises(accounts.AccountError, match=message):
        accounts.add_user(sessions, username, role, password, actor="admin")


def test_usernames_are_unique(sessions):
    accounts.add_user(sessions, "student.lee", "student", "first password", actor="admin")
    with pytest.raises(accounts.AccountError, match="taken"):
        accounts.add_user(sessions, "student.lee", "admin", "second password", actor="admin")
    with pytest.raises(accounts.AccountError, match="no account named 'ghost'"):
        accounts.set_role(sessions, "ghost", "admin", actor="admin")


def test_users_commands(cli, tmp_path):
    env = {"CARELOOP_HOME": str(tmp_path / "home")}
    assert cli("db", "upgrade", env=env).returncode == 0
    added = cli("users", "add", "dr.osei", "--role", "physician", env=env)
    assert added.returncode == 0 and "temporary password: " in added.stdout
    assert "it must be replaced at the first sign-in" in added.stdout
    password = added.stdout.split("temporary password: ")[1].split()[0]
    stdin = subprocess.run([sys.executable, "-m", "cli", "users", "add", "admin.ana", "--role", "admin",
                            "--password-stdin"], input="a very good password\n", capture_output=True, text=True,
                           env={**os.environ, **env})
    assert stdin.returncode == 0 and "password" not in stdin.stdout
    assert cli("users", "set-role", "dr.osei", "nurse", env=env).returncode == 0
    assert cli("users", "disable", "admin.ana", env=env).returncode == 0
    listing = cli("users", "list", env=env).stdout
    assert "dr.osei" in listing and "nurse" in listing and "admin.ana" in listing and "yes" in listing
    assert re.search(r"dr\.osei .* temporary", listing) and re.search(r"admin\.ana .* own", listing)
    bad = cli("users", "set-role", "dr.osei", "superuser", env=env)
    assert bad.returncode == 1 and "role 'superuser' is unknown" in bad.stderr and "Traceback" not in bad.stderr

    from careloop import db

    sessions = db.session_factory(db.make_engine(f"sqlite:///{(tmp_path / 'home' / 'careloop.db').resolve()}"))
    assert accounts.authenticate(sessions, "dr.osei", password).role == "nurse"
    assert accounts.authenticate(sessions, "dr.osei", password).must_change_password, "a generated one is temporary"
    assert accounts.authenticate(sessions, "admin.ana", "a very good password") is None  # disabled

    # Issue 18, 13: one spelling of a name, however it is typed, in every command.
    mixed = cli("users", "add", "Nurse.Kim", "--role", "nurse", env=env)
    assert mixed.returncode == 0 and mixed.stdout.startswith("nurse.kim: added as nurse"), mixed.stdout + mixed.stderr
    mixed_password = mixed.stdout.split("temporary password: ")[1].split()[0]
    assert cli("users", "set-role", "NURSE.KIM", "physician", env=env).returncode == 0
    again = cli("users", "add", "nurse.KIM", "--role", "nurse", env=env)
    assert again.returncode == 1 and "taken" in again.stderr
    assert accounts.authenticate(sessions, " Nurse.Kim", mixed_password).username == "nurse.kim"
    assert accounts.authenticate(sessions, "nurse.kim", mixed_password).role == "physician"


def test_a_temporary_password_is_replaced_by_its_owner(sessions):
    """A generated password is temporary until its owner chooses their own (audited as the owner);
    a wrong current password, the same one again or a short one are refused with the reason."""
    accounts.add_user(sessions, "nurse.ann", "nurse", "given by the admin", actor="bot:ad.min", temporary=True)
    assert accounts.authenticate(sessions, "nurse.ann", "given by the admin").must_change_password
    for current, new, message in (("wrong password!", "her own password", "current password is not right"),
                                  ("given by the admin", "given by the admin", "different from the one"),
                                  ("given by the admin", "short", "at least 10 characters")):
        with pytest.raises(accounts.AccountError, match=message):
            accounts.change_own_password(sessions, "nurse.ann", current, new)
    accounts.change_own_password(sessions, "Nurse.Ann", "given by the admin", "her own password")
    assert accounts.authenticate(sessions, "nurse.ann", "given by the admin") is None
    assert not accounts.authenticate(sessions, "nurse.ann", "her own password").must_change_password
    accounts.set_password(sessions, "nurse.ann", "reset by the admin", actor="bot:ad.min", temporary=True)
    assert accounts.authenticate(sessions, "nurse.ann", "reset by the admin").must_change_password
    with sessions() as session:
        actions = [(e.actor, e.action) for e in reversed(audit.recent(session))]
    assert actions == [("bot:ad.min", "user.add"), ("nurse.ann", "user.change_password"),
                       ("bot:ad.min", "user.set_password")]


def test_the_last_enabled_admin_is_kept_when_asked(sessions):
    """The admin page asks (keep_an_admin): demoting or disabling the only enabled admin is refused;
    with a second admin it is allowed. The CLI does not ask: a compromised sole admin can be disabled
    from the server's shell, where `careloop users add` makes a new one."""
    accounts.add_user(sessions, "admin.one", "admin", "long enough pw", actor="test")
    for change in (lambda: accounts.set_role(sessions, "admin.one", "nurse", actor="x", keep_an_admin=True),
                   lambda: accounts.set_disabled(sessions, "admin.one", True, actor="x", keep_an_admin=True)):
        with pytest.raises(accounts.AccountError, match="admin.one is the only enabled admin"):
            change()
    accounts.add_user(sessions, "admin.two", "admin", "long enough pw", actor="test")
    accounts.set_disabled(sessions, "admin.one", True, actor="x", keep_an_admin=True)
    with pytest.raises(accounts.AccountError, match="admin.two is the only enabled admin"):
        accounts.set_role(sessions, "admin.two", "student", actor="x", keep_an_admin=True)
    accounts.set_disabled(sessions, "admin.two", True, actor="cli:root")  # the shell may


def test_two_admins_demoting_each_other_at_once_both_finish(postgres_url):
    """Issue 31, 13: on PostgreSQL, two admins demoting each other at once deadlocked (each locked the
    account it changed, then waited for the other's row) and one saw a generic error. Made certain
    here: a third connection holds the first admin's row until both changes are waiting, then lets go.
    Both finish, and an admin is left."""
    import threading

    import sqlalchemy as sa

    from careloop import db

    db.upgrade(postgres_url)
    engine = db.make_engine(postgres_url)
    sessions = db.session_factory(engine)
    for name in ("admin.first", "admin.x", "admin.y"):
        accounts.add_user(sessions, name, "admin", "long enough pw", actor="test")
    failures: list[BaseException] = []

    def demote(username: str) -> None:
        try:
            accounts.set_role(sessions, username, "nurse", actor="bot:other", keep_an_admin=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    try:
        with engine.connect() as holder:
            holder.execute(sa.text("SELECT id FROM users WHERE username = 'admin.first' FOR UPDATE"))
            threads = [threading.Thread(target=demote, args=(name,)) for name in ("admin.x", "admin.y")]
            for thread in threads:
                thread.start()
            with engine.connect() as watcher:
                deadline = time.monotonic() + 20
                while watcher.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar() < 2:
                    assert time.monotonic() < deadline, "both changes were to wait on the held row"
                    time.sleep(0.05)
            holder.rollback()
        for thread in threads:
            thread.join(30)
        assert not failures, failures
        assert {user.username: user.role for user in accounts.users(sessions)} == {
            "admin.first": "admin", "admin.x": "nurse", "admin.y": "nurse"}
    finally:
        engine.dispose()
