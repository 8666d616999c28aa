"""Accounts and roles: who may chat (student), review (nurse, physician) and administer (admin).

Passwords are hashed with Argon2id (argon2-cffi); the hash parameters travel inside each hash,
so stronger settings later rehash old passwords at the next login. Role changes, disabling and
new accounts are written to the audit log in the same transaction.

A password generated for someone (``careloop users add``, a reset on the admin page) is temporary:
whoever handed it out knows it, so the account must choose its own at the next sign-in
(``must_change_password``) before it can do anything else, and the audit log's actor is then
the person who signed in.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, DateTime, Integer, String, false, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from careloop import audit
from careloop.db import Base, transaction, utcnow

ROLES = ("student", "nurse", "physician", "admin")
REVIEWERS = ("nurse", "physician")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")
MAX_TYPED_USERNAME = 200  # longer input is not a name; it is never normalised, hashed or logged whole
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified against when the username is unknown, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(Exception):
    """A bad username, role or password, or an unknown account; the message says which."""


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Sessions signed in before this moment have ended: set when the password, role or enabled state
    # changes, so a reset or demotion reaches a browser that is already signed in (issue 31, 3).
    sessions_valid_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


def normalize_username(username: str) -> str:
    """The one spelling of a username: trimmed and lower-case (``Stu.One`` is ``stu.one``). Every
    way in (sign-in, the bot's handlers, ``careloop users``) goes through it, so an account is
    found however its owner typed it."""
    return username.strip().lower() if len(username) <= MAX_TYPED_USERNAME else ""


def new_password() -> str:
    return secrets.token_urlsafe(12)


def add_user(sessions: sessionmaker[Session], username: str, role: str, password: str, *, actor: str,
             temporary: bool = False) -> User:
    """A new account; ``temporary``: the password was generated for it and must be replaced at the
    first sign-in."""
    username = normalize_username(username)
    _check_username(username)
    _check_role(role)
    _check_password(password)
    user = User(username=username, role=role, password_hash=_hasher.hash(password), must_change_password=temporary)
    try:
        with transaction(sessions) as session:
            session.add(user)
            session.flush()
            audit.record(session, actor, "user.add", username, role=role, temporary_password=temporary)
    except IntegrityError:
        raise AccountError(f"the username {username!r} is taken") from None
    return user


def authenticate(sessions: sessionmaker[Session], username: str, password: str) -> User | None:
    """The enabled account with this username and password, or None (never says which was wrong)."""
    username = normalize_username(username)
    with sessions() as session:
        user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        with transaction(sessions) as session:
            session.get(User, user.id).password_hash = _hasher.hash(password)
    return user


def set_role(sessions: sessionmaker[Session], username: str, role: str, *, actor: str,
             keep_an_admin: bool = False) -> None:
    """Change a role. ``keep_an_admin`` (the admin page): refused if no enabled admin would be left;
    the CLI may (someone with the server's shell can always add one)."""
    _check_role(role)
    with transaction(sessions) as session:
        if keep_an_admin and role != "admin":
            _lock_admins(session)
        user = _get(session, username)
        if keep_an_admin and role != "admin":
            _check_another_admin(session, user)
        audit.record(session, actor, "user.set_role", user.username, before=user.role, after=role)
        user.role = role
        user.sessions_valid_from = utcnow()


def set_disabled(sessions: sessionmaker[Session], username: str, disabled: bool, *, actor: str,
                 keep_an_admin: bool = False) -> None:
    """Disable or enable an account; ``keep_an_admin`` as in :func:`set_role`."""
    with transaction(sessions) as session:
        if keep_an_admin and disabled:
            _lock_admins(session)
        user = _get(session, username)
        if keep_an_admin and disabled:
            _check_another_admin(session, user)
        user.disabled = disabled
        user.sessions_valid_from = utcnow()
        audit.record(session, actor, "user.disable" if disabled else "user.enable", user.username)


def set_password(sessions: sessionmaker[Session], username: str, password: str, *, actor: str,
                 temporary: bool = False) -> None:
    """Set someone's password; ``temporary`` as in :func:`add_user`."""
    _check_password(password)
    with transaction(sessions) as session:
        user = _get(session, username)
        user.password_hash = _hasher.hash(password)
        user.must_change_password = temporary
        user.sessions_valid_from = utcnow()
        audit.record(session, actor, "user.set_password", user.username, temporary_password=temporary)


def change_own_password(sessions: sessionmaker[Session], username: str, current: str, new: str) -> datetime:
    """The account's owner replaces their password (a temporary one, or any): the current one must be
    right and the new one different. Audited with the owner as the actor. Every session signed in
    before the returned moment has ended: the caller renews the one the change was made from."""
    _check_password(new)
    if new == current:
        raise AccountError("choose a password different from the one you were given")
    user = authenticate(sessions, username, current)
    if user is None:
        raise AccountError("the current password is not right")
    with transaction(sessions) as session:
        user = _get(session, user.username)
        user.password_hash = _hasher.hash(new)
        user.must_change_password = False
        user.sessions_valid_from = changed = utcnow()
        audit.record(session, user.username, "user.change_password", user.username)
    return changed


def users(sessions: sessionmaker[Session]) -> list[User]:
    with sessions() as session:
        return list(session.scalars(select(User).order_by(User.username)))


def _get(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == normalize_username(username)).with_for_update())
    if user is None:
        raise AccountError(f"no account named {username!r} (see `careloop users list`)")
    return user


def _lock_admins(session: Session) -> list[int]:
    """Lock every enabled admin's row, in one order (by id), before the account being changed: two
    admins demoting each other at once then queue on the first row, so they cannot both pass the
    last-admin check, and never deadlock (issue 31, 13: each locked its target, then waited for the
    other's). Returns their ids."""
    return list(session.scalars(select(User.id).where(User.role == "admin", User.disabled.is_(False))
                                .order_by(User.id).with_for_update()))


def _check_another_admin(session: Session, user: User) -> None:
    """Refuse a change that would leave no enabled admin (``user`` is about to stop being one); the
    admins' rows are locked already (``_lock_admins``)."""
    if user.role != "admin" or user.disabled:
        return
    if not set(_lock_admins(session)) - {user.id}:
        raise AccountError(f"{user.username} is the only enabled admin: make another account an admin first, "
                           "or no one could manage accounts from the web app")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")


def _check_username(username: str) -> None:
    if not USERNAME.match(username):
        raise AccountError(f"username {username!r} is invalid: 3-64 of a-z 0-9 . _ -, starting with a letter or digit")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role {role!r} is unknown; choose from {', '.join(ROLES)}")
