"""Browser fixtures: Debian's chromium driven by Playwright (`browser`), and `visit`, which opens a
page signed in as a user."""

from __future__ import annotations

import pytest
from e2e_browser import open_browser, sign_in
from support import PASSWORD


@pytest.fixture(scope="module")
def browser():
    with open_browser() as launched:
        yield launched


@pytest.fixture
def visit(browser, bot_stack):
    """Open the bot signed in as a user; every request the page makes is recorded."""
    contexts = []

    def open_as(username: str, password: str = PASSWORD):
        page = sign_in(browser, bot_stack.url, username, password, wait=password == PASSWORD)
        contexts.append(page.context)
        return page

    yield open_as
    for context in contexts:
        context.close()
