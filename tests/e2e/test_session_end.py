"""What a signed-in student sees in Chromium when the session ends while the page is open."""

from __future__ import annotations

import time

from e2e_browser import shot, sign_in
from support import LIMITED_IDLE, PASSWORD, SHORT_SESSION_IDLE

from careloop import accounts


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


def test_a_question_typed_when_the_session_ended_in_another_tab_is_kept_through_signing_in(browser, bot_stack):
    """Issue 19, 6: signed out in another tab, the question sent here vanished under red "Error"
    badges on the chat and the input. It stays in view, is kept across signing in again (the banner's
    button) and is back in the box for the same account, ready to send."""
    accounts.add_user(bot_stack.sessions, "stu.tabs", "student", PASSWORD, actor="test")
    page = sign_in(browser, bot_stack.url, "stu.tabs", PASSWORD)
    try:
        other = page.context.new_page()  # a second tab of the same browser: the same session
        other.goto(bot_stack.url)
        other.locator("#sign-out-button").click()  # ends every session of the account
        other.get_by_label("username").wait_for(timeout=15_000)
        question = "What does a peak flow meter measure?"
        box = page.locator("#chat-input textarea")
        box.fill(question)
        page.locator("#chat-send").click()
        page.locator("#session-ended").filter(has_text="what is in the chat box stays there").wait_for(timeout=15_000)
        assert box.is_visible() and box.input_value() == question
        assert page.locator("[data-testid=status-tracker] .error").filter(visible=True).count() == 0, "no Error badges"
        page.locator("#sign-in-again").click()
        page.get_by_label("username").fill("stu.tabs")
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#header >> text=signed in as", timeout=30_000)
        page.wait_for_function("(q) => document.querySelector('#chat-input textarea').value === q", arg=question,
                               timeout=10_000)
        shot(page, "session-ended-question-kept")
    finally:
        page.context.close()


def test_an_open_page_left_alone_ends_its_session(browser, limited_bot):
    """Issue 18, 5: the page's status timer (every second on this bot, the old one every 5 s) used
    to count as activity, so an open page never went idle. Only user actions count now: a click
    part-way keeps the session, and the page left alone then says its session has ended."""
    page = sign_in(browser, limited_bot.url, "stu.dent", PASSWORD)
    try:
        time.sleep(LIMITED_IDLE / 2)
        page.locator("#chat-new").click()  # a user action
        time.sleep(LIMITED_IDLE / 2 + 1)  # past the idle limit since signing in, not since the click
        assert page.locator("#session-ended").count() == 0, "a user action did not keep the session"
        left_alone = time.monotonic()
        notice = page.get_by_role("alert").filter(has_text="Your session has ended")
        notice.wait_for(timeout=(LIMITED_IDLE + 15) * 1000)  # the timer's next call finds it ended
        assert time.monotonic() - left_alone < LIMITED_IDLE + 5
    finally:
        page.context.close()


def test_the_sign_out_button_signs_out(browser, bot_stack):
    """Signing out is the page's POST form with its CSRF token (issue 18, suspected logout)."""
    page = sign_in(browser, bot_stack.url, "nurse.a", PASSWORD)
    try:
        page.locator("#sign-out-button").click()
        page.get_by_label("username").wait_for(timeout=15_000)  # the sign-in form, not the app
        assert page.locator("#header").count() == 0
    finally:
        page.context.close()
