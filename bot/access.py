"""Who may open which page, checked on the server for every call; throttled logins, checked off
the event loop; sessions that end.

Hiding a tab is only a courtesy: every handler asks ``Access.require`` first, which reads the
account from the database each time, so a role change or a disabled account takes effect on the
next click, and a student calling a review or admin endpoint directly (gradio_client, curl) is
refused. The same check, from the session cookie, decides who may use Gradio's upload route
(``AdminUploads``, for ``bot.hardening``): a signed-in admin only.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.hardening import LOGIN_CLIENT, LOGIN_MESSAGE, session_tokens
from careloop.accounts import (
    REVIEWERS,
    ROLES,
    USERNAME,
    AccountError,
    User,
    authenticate,
    change_own_password,
    normalize_username,
)
from careloop.db import utcnow
from careloop.log import get_logger

log = get_logger(__name__)

PAGES: dict[str, tuple[str, ...]] = {"chat": ROLES, "review": REVIEWERS, "admin": ("admin",)}


class Refused(Exception):
    """The signed-in account may not do this; the message is fit to show."""


MUST_CHANGE_PASSWORD = ("Choose your own password first (the form at the top of the page): the one you signed in "
                        "with was set for you and is temporary.")


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in: whether it passed, and what the sign-in page says when it did not.
    The message is the same for a name that is no account as for one that is, so a refusal never
    tells whether a username exists."""

    ok: bool
    message: str = ""


WRONG = "Incorrect username or password."


def _duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{max(1, math.ceil(seconds))} seconds"


@dataclass(frozen=True)
class Viewer:
    username: str
    role: str
    must_change_password: bool = False  # signed in with a temporary password: no page until it is replaced

    def may_open(self, page: str) -> bool:
        return self.role in PAGES[page] and not self.must_change_password


class Access:
    """Sign-in with throttles an outsider cannot turn against an account: failures are counted per
    (client address, username) and per client address, so a flood from one address locks out
    that address, never the account's owner elsewhere. Names that cannot be accounts are refused
    before any hashing and logged by length only; both failure tables are bounded. Argon2 runs in a
    small thread pool, off Gradio's event loop, and at most ``max_pending`` checks wait for it at
    once (more are refused at once: a global limit)."""

    MAX_TRACKED = 10_000  # entries per failure table; the oldest go first

    def __init__(self, sessions: sessionmaker[Session], max_failures: int, lockout_seconds: float, *,
                 address_failures: int | None = None, hash_workers: int = 2, max_pending: int = 16):
        self._sessions = sessions
        self._max_failures = max_failures
        self._address_failures = address_failures or 4 * max_failures
        self._lockout = lockout_seconds
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=hash_workers, thread_name_prefix="careloop-login")
        self._max_pending, self._pending = max_pending, 0

    def login(self, username: str, password: str, client: str = "local") -> bool:
        """Check a sign-in, blocking (scripts, tests). After ``max_failures`` wrong passwords within
        the lockout window from one address, that username is refused from that address (right
        password or not) until the window passes; other addresses are not affected."""
        return self.check(username, password, client).ok

    def check(self, username: str, password: str, client: str = "local") -> SignIn:
        """``login`` with what the sign-in page should say when it fails."""
        started = time.monotonic()  # a failure counts from when it was tried
        name, refused = self._admit(username, client)
        if refused is not None:
            return refused
        try:
            user = authenticate(self._sessions, name, password)
        finally:
            self._settle(name, client, None)
        return self._settle(name, client, user is not None, started)

    async def login_async(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callback: as ``login``, for the address ``bot.hardening`` noted, with
        the Argon2 check in the pool so the event loop keeps serving everyone else. What the page
        should say of a refusal goes to ``bot.hardening.LOGIN_MESSAGE`` (Gradio's page says only
        "Incorrect Credentials", whatever the reason)."""
        client = LOGIN_CLIENT.get()
        started = time.monotonic()  # a failure counts from when it was tried
        name, outcome = self._admit(username, client)
        if outcome is None:
            try:
                user = await asyncio.get_running_loop().run_in_executor(
                    self._pool, authenticate, self._sessions, name, password)
            finally:
                self._settle(name, client, None)
            outcome = self._settle(name, client, user is not None, started)
        said = LOGIN_MESSAGE.get()
        if said is not None and not outcome.ok:
            said.append(outcome.message)
        return outcome.ok

    def _admit(self, username: str, client: str) -> tuple[str, SignIn | None]:
        """The normalised username, and None if a password check may run now (counted as pending),
        else the refusal."""
        name = normalize_username(username)
        if not USERNAME.match(name):
            log.warning("login_refused", reason="not a valid username", length=len(username), client=client)
            return name, SignIn(False, WRONG)
        now = time.monotonic()
        with self._lock:
            wait = self._locked_for(self._by_address, client, self._address_failures, now)
            if wait:
                log.warning("login_throttled", client=client)
                return name, SignIn(False, "Too many failed sign-ins from your address: sign-in from it is paused "
                                           f"for {_duration(wait)}. Try again then.")
            wait = self._locked_for(self._failures, (client, name), self._max_failures, now)
            if wait:
                log.warning("login_locked", user=name, client=client)
                return name, SignIn(False, f"This username is locked after {self._max_failures} failed sign-ins: "
                                           f"try again in {_duration(wait)}. (Until then even the right password "
                                           "is refused.)")
            if self._pending >= self._max_pending:
                log.warning("login_busy", pending=self._pending)
                return name, SignIn(False, "The server is checking many sign-ins at once: try again in a few seconds.")
            self._pending += 1
        return name, None

    def _locked_for(self, table: OrderedDict, key: object, limit: int, now: float) -> float:
        """Seconds until ``key`` may try again (0: it may now): a lock lasts until the oldest of its
        last ``limit`` failures leaves the window."""
        failures = self._recent(table, key, now)
        if len(failures) < limit:
            return 0.0
        return max(0.1, failures[-limit] + self._lockout - now)

    def _settle(self, name: str, client: str, ok: bool | None, started: float = 0.0) -> SignIn:
        """None: the check ended (no longer pending); True/False: record its outcome."""
        left = 0
        with self._lock:
            if ok is None:
                self._pending -= 1
            elif ok:
                self._failures.pop((client, name), None)
            else:
                for table, key in ((self._failures, (client, name)), (self._by_address, client)):
                    table.setdefault(key, deque()).append(started)  # type: ignore[arg-type]
                    table.move_to_end(key)  # type: ignore[arg-type]
                    while len(table) > self.MAX_TRACKED:
                        table.popitem(last=False)
                left = self._max_failures - len(self._recent(self._failures, (client, name), time.monotonic()))
        if ok:
            log.info("login", user=name)
            return SignIn(True)
        if ok is None:
            return SignIn(False)
        log.warning("login_failed", user=name, client=client)
        if left <= 0:
            return SignIn(False, f"{WRONG} After {self._max_failures} failed sign-ins this username is locked for "
                                 f"{_duration(self._lockout)}.")
        if left <= 2:
            attempt = "attempt" if left == 1 else "attempts"
            return SignIn(False, f"{WRONG} {left} more failed {attempt} will lock this username for "
                                 f"{_duration(self._lockout)}.")
        return SignIn(False, WRONG)

    def _recent(self, table: OrderedDict, key: object, now: float) -> deque[float]:
        """The failures of ``key`` within the lockout window (an expired entry is dropped)."""
        failures = table.get(key)
        if failures is None:
            return deque()
        while failures and now - failures[0] > self._lockout:
            failures.popleft()
        if not failures:
            del table[key]
        return failures

    def viewer(self, username: str | None) -> Viewer:
        """The signed-in account as it is now in the database."""
        if not username:
            raise Refused("You are signed out (you signed out, or the session ended). "
                          "Reload the page to sign in again.")
        with self._sessions() as session:
            user = session.scalar(select(User).where(User.username == normalize_username(username)))
        if user is None or user.disabled:
            raise Refused("This account is disabled or no longer exists; please sign in again.")
        return Viewer(user.username, user.role, user.must_change_password)

    def require(self, username: str | None, page: str) -> Viewer:
        viewer = self.viewer(username)
        if viewer.must_change_password:
            raise Refused(MUST_CHANGE_PASSWORD)
        if not viewer.may_open(page):
            log.warning("access_refused", user=viewer.username, role=viewer.role, page=page)
            raise Refused(f"Your role ({viewer.role}) cannot use the {page} page.")
        return viewer

    def change_password(self, username: str | None, current: str, new: str,
                        repeated: str) -> tuple[Viewer, datetime]:
        """The signed-in account replaces its password; Refused says why not (the message is fit to show).
        Also returns the moment of the change: the account's other sessions signed in before it end."""
        viewer = self.viewer(username)
        if new != repeated:
            raise Refused("The two new passwords differ: type the same one twice.")
        try:
            changed = change_own_password(self._sessions, viewer.username, current, new)
        except AccountError as exc:
            raise Refused(f"Password not changed: {exc}.") from None
        log.info("password_changed", user=viewer.username)
        return self.viewer(viewer.username), changed

    def sessions_valid_from(self, username: str) -> datetime | None:
        """When the account's password, role or enabled state last changed (``SessionTokens``); an
        account that no longer exists ends its sessions now."""
        with self._sessions() as session:
            user = session.scalar(select(User).where(User.username == normalize_username(username)))
        return utcnow() if user is None else user.sessions_valid_from


class SessionTokens(dict):
    """Gradio's map of session cookie to username (``App.tokens``), with sessions that end: after
    ``idle_seconds`` without a user action, ``max_seconds`` after signing in, or when the account's
    password, role or enabled state changed after it signed in (``valid_from``: the account's
    ``sessions_valid_from``, read at most once a second per account; issue 31, 3). Gradio resolves the
    user of every request (page, API call, file) with ``tokens.get``, so an ended session is refused
    everywhere at once, and a shared ward computer left signed in does not stay so.

    Only user actions count as activity (``touch``: the page's handlers call it through
    ``bot.pages.guard``); reading a token does not, or the open page's own status timer and
    Gradio's heartbeat would keep an unattended session alive until its maximum age. Usernames are
    stored normalised (Gradio keeps the name as typed at sign-in), so ``Stu.One`` is ``stu.one``
    in every handler."""

    ACCOUNT_CHECK_SECONDS = 1.0

    def __init__(self, idle_seconds: float, max_seconds: float,
                 valid_from: Callable[[str], datetime | None] | None = None):
        super().__init__()
        self._idle, self._max = idle_seconds, max_seconds
        self._valid_from = valid_from
        # token -> (signed in, last user action) on the monotonic clock, and the wall-clock moment the
        # session counts as signed in from (compared with the database's sessions_valid_from)
        self._times: dict[str, tuple[float, float]] = {}
        self._since: dict[str, datetime] = {}
        self._accounts: dict[str, tuple[float, datetime | None]] = {}  # username -> (read at, valid from)
        self._lock = threading.Lock()

    def __setitem__(self, token: str, username: str) -> None:
        now = time.monotonic()
        with self._lock:
            super().__setitem__(token, normalize_username(username))
            self._times[token] = (now, now)
            self._since[token] = utcnow()

    def touch(self, tokens: list[str]) -> None:
        """A user action in the sessions ``tokens`` (the request's session cookies): they stay alive
        for another ``idle_seconds``. Ended or unknown tokens are ignored."""
        now = time.monotonic()
        with self._lock:
            for token in tokens:
                if self._active(token):
                    self._times[token] = (self._times[token][0], now)

    def renew(self, tokens: list[str], since: datetime) -> None:
        """The sessions ``tokens`` outlive an account change made from them at ``since`` (the owner's
        own password change ends their other sessions, not this one)."""
        with self._lock:
            for token in tokens:
                if token in self._since:
                    self._since[token] = since
            self._accounts.clear()

    def __delitem__(self, token: str) -> None:
        with self._lock:  # Gradio's logout may delete a token that just ended
            self._forget(token)

    def get(self, token: object, default: str | None = None) -> str | None:
        with self._lock:
            if not self._active(token):
                return default
            username, since = super().get(token), self._since[token]
        if self._changed_after(username, since):
            with self._lock:
                self._forget(token)
            log.info("session_ended", user=username, reason="account_changed")
            return default
        return username

    def __contains__(self, token: object) -> bool:
        return self.get(token) is not None

    def _changed_after(self, username: str, since: datetime) -> bool:
        """Whether the account's password, role or enabled state changed after ``since``. Read outside
        the lock (a database call), cached briefly: every request of a page asks."""
        if self._valid_from is None:
            return False
        now = time.monotonic()
        with self._lock:
            read_at, valid_from = self._accounts.get(username, (-math.inf, None))
        if now - read_at > self.ACCOUNT_CHECK_SECONDS:
            valid_from = self._valid_from(username)
            with self._lock:
                if len(self._accounts) >= 10_000:
                    self._accounts.clear()
                self._accounts[username] = (now, valid_from)
        if valid_from is None:
            return False
        if valid_from.tzinfo is None:  # SQLite gives back naive UTC
            valid_from = valid_from.replace(tzinfo=UTC)
        return since < valid_from

    def _forget(self, token: object) -> None:
        self.pop(token, None)
        self._times.pop(token, None)
        self._since.pop(token, None)

    def _active(self, token: object) -> bool:
        """Whether ``token`` is a session that has not timed out (a timed-out one is forgotten)."""
        if token not in self._times:
            return False
        started, seen = self._times[token]
        now = time.monotonic()
        if now - seen > self._idle or now - started > self._max:
            username = super().get(token)
            self._forget(token)
            log.info("session_ended", user=username, idle=now - seen > self._idle)
            return False
        return True


class AdminUploads:
    """``bot.hardening.UploadGate``: Gradio's upload route for a signed-in admin's session only.

    Why here and not in a handler: Gradio stores an upload before any handler runs, so the route
    itself must know whose session sends it. The session cookie names the account (the session
    table, ``tokens``: an ended session names no one), and the account's role is read from the
    database as every handler reads it (``Access.require``), so a demoted or disabled admin, or one
    still on a temporary password, is refused at once. The body may be one library document
    (``max_document_bytes``) and the multipart form around it."""

    FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers, generous for many files at once

    def __init__(self, access: Access, tokens: SessionTokens, max_document_bytes: int):
        self.access, self.tokens = access, tokens
        self.max_body = max_document_bytes + self.FORM_OVERHEAD

    def admin(self, cookies: dict[str, str]) -> str | None:
        for token in session_tokens(cookies):
            username = self.tokens.get(token)
            if username is None:
                continue
            try:
                return self.access.require(username, "admin").username
            except Refused:
                return None
        return None
