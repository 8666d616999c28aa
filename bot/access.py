"""Who may open which page, checked on the server for every call; rate-limited logins; sessions
that end.

Hiding a tab is only a courtesy: every handler asks ``Access.require`` first, which reads the
account from the database each time, so a role change or a disabled account takes effect on the
next click, and a student calling a review or admin endpoint directly (gradio_client, curl) is
refused.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from careloop.accounts import REVIEWERS, ROLES, User, authenticate
from careloop.log import get_logger

log = get_logger(__name__)

PAGES: dict[str, tuple[str, ...]] = {"chat": ROLES, "review": REVIEWERS, "admin": ("admin",)}


class Refused(Exception):
    """The signed-in account may not do this; the message is fit to show."""


@dataclass(frozen=True)
class Viewer:
    username: str
    role: str

    def may_open(self, page: str) -> bool:
        return self.role in PAGES[page]


class Access:
    def __init__(self, sessions: sessionmaker[Session], max_failures: int, lockout_seconds: float):
        self._sessions = sessions
        self._max_failures = max_failures
        self._lockout = lockout_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def login(self, username: str, password: str) -> bool:
        """Gradio's ``auth=`` callback. After ``max_failures`` wrong passwords within the lockout
        window, the username is refused (right password or not) until the window passes."""
        username = username.strip().lower()
        now = time.monotonic()
        with self._lock:
            failures = self._failures[username]
            while failures and now - failures[0] > self._lockout:
                failures.popleft()
            if len(failures) >= self._max_failures:
                log.warning("login_locked", user=username)
                return False
        if authenticate(self._sessions, username, password) is not None:
            with self._lock:
                self._failures.pop(username, None)
            log.info("login", user=username)
            return True
        with self._lock:
            self._failures[username].append(now)
        log.warning("login_failed", user=username)
        return False

    def viewer(self, username: str | None) -> Viewer:
        """The signed-in account as it is now in the database."""
        if not username:
            raise Refused("You are signed out (you signed out, or the session ended). "
                          "Reload the page to sign in again.")
        with self._sessions() as session:
            user = session.scalar(select(User).where(User.username == username))
        if user is None or user.disabled:
            raise Refused("This account is disabled or no longer exists; please sign in again.")
        return Viewer(user.username, user.role)

    def require(self, username: str | None, page: str) -> Viewer:
        viewer = self.viewer(username)
        if not viewer.may_open(page):
            log.warning("access_refused", user=viewer.username, role=viewer.role, page=page)
            raise Refused(f"Your role ({viewer.role}) cannot use the {page} page.")
        return viewer


class SessionTokens(dict):
    """Gradio's map of session cookie to username (``App.tokens``), with sessions that end: after
    ``idle_seconds`` without a request, or ``max_seconds`` after signing in, whichever comes first.
    Gradio resolves the user of every request (page, API call, file) with ``tokens.get``, so an
    ended session is refused everywhere at once, and a shared ward computer left signed in does
    not stay so."""

    def __init__(self, idle_seconds: float, max_seconds: float, signed_in: dict[str, str] | None = None):
        super().__init__()
        self._idle, self._max = idle_seconds, max_seconds
        self._times: dict[str, tuple[float, float]] = {}  # token -> (signed in, last request)
        self._lock = threading.Lock()
        for token, username in (signed_in or {}).items():
            self[token] = username

    def __setitem__(self, token: str, username: str) -> None:
        now = time.monotonic()
        with self._lock:
            super().__setitem__(token, username)
            self._times[token] = (now, now)

    def __delitem__(self, token: str) -> None:
        with self._lock:  # Gradio's logout may delete a token that just ended
            self.pop(token, None)
            self._times.pop(token, None)

    def get(self, token: object, default: str | None = None) -> str | None:
        with self._lock:
            return super().get(token) if self._active(token) else default

    def __contains__(self, token: object) -> bool:
        with self._lock:
            return self._active(token)

    def _active(self, token: object) -> bool:
        """Whether ``token`` is a session that has not ended; counts this request as activity."""
        if token not in self._times:
            return False
        started, seen = self._times[token]
        now = time.monotonic()
        if now - seen > self._idle or now - started > self._max:
            username = self.pop(token, None)
            del self._times[token]
            log.info("session_ended", user=username, idle=now - seen > self._idle)
            return False
        self._times[token] = (started, now)
        return True
