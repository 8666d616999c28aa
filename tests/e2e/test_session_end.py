"""What a signed-in student sees in Chromium when the session ends while the page is open."""

from __future__ import annotations

import time

from support import PASSWORD, SHORT_SESSION_IDLE
from e2e_browser import shot, sign_in


def test_a_page_whose_session_ended_says_so_and_leads_to_sign_in(browser, short_sessions_bot):
    page = sign_in(browser, short_sessions_bot.url, "stu.dent", PASSWORD)
    try:
        time.sleep(SHORT_SESSION_IDLE + 1)  # idle past CARELOOP_BOT_SESSION_IDLE_SECONDS
        page.locator("#chat-input textarea").fill("What is asthma?")
        page.locator("#chat-send").click()
        notice = page.get_by_role("alert").filter(has_text="Your session has ended")
        notice.wait_for(timeout=15_000)
        assert "What you just sent was not saved" in notice.inner_text()
        shot(page, "session-ended")
        notice.get_by_role("link", name="Sign in again").click()
        page.get_by_label("username").wait_for(timeout=15_000)  # the sign-in form, not the app
        assert page.locator("#header").count() == 0
    finally:
        page.context.close()
