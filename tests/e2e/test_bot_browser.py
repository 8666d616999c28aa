"""The bot in a real headless Chromium (Debian's, driven by Playwright) against real serving (tiny
model), a real feedback worker and the store. Each test saves a screenshot of its page to
tests/artifacts/screenshots/ (the README shows them)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from e2e_browser import judge_with_keys, only_local, open_review, shot, sign_in, tabs
from processes import wait_for
from sqlalchemy import select
from support import PASSWORD

from adapters import rollout
from adapters.registry import Registry
from adapters.rollout import open_client
from careloop import accounts
from feedback import review_queue as queue
from feedback.store import Comparison, Rating
from trainer import runs


def test_a_wrong_password_is_refused_on_the_login_page(visit):
    page = visit("stu.dent", "not-the-password")
    page.locator("#login-message").filter(has_text="Incorrect username or password.").wait_for(timeout=15_000)
    assert page.locator("#header").count() == 0
    shot(page, "login")


def test_a_locked_username_is_told_so_and_for_how_long(browser, bot_stack, short_sessions_bot):
    """Issue 19, 10: after five wrong passwords the right one showed "Incorrect Credentials" and no
    word of the lock. (On the short-sessions bot: its failure counts are its own, so the other
    tests' sign-ins on the main bot are not throttled.)"""
    accounts.add_user(bot_stack.sessions, "locked.nurse", "nurse", PASSWORD, actor="test")
    with httpx.Client(base_url=short_sessions_bot.url) as client:  # four wrong passwords, as the form posts them
        for _ in range(4):
            assert client.post("/login", data={"username": "locked.nurse", "password": "wrong"}).status_code == 400
    page = sign_in(browser, short_sessions_bot.url, "locked.nurse", "wrong", wait=False)
    try:
        said = page.locator("#login-message")
        said.filter(has_text="After 5 failed sign-ins this username is locked for 5 minutes.").wait_for(timeout=15_000)
        page.get_by_label("username").fill("locked.nurse")
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        said.filter(has_text="This username is locked after 5 failed sign-ins: try again in 5 minutes.").wait_for(
            timeout=15_000)
        assert page.locator("#header").count() == 0, "the right password is refused while locked"
        shot(page, "login-locked")
    finally:
        page.context.close()


def _ratings(stack, comment: str) -> list[Rating]:
    with stack.sessions() as session:
        return list(session.scalars(select(Rating).where(Rating.comment == comment)))


def test_enter_sends_and_shift_enter_starts_a_new_line(visit):
    """Issue 29, 8: Enter added a line and Shift+Enter sent, the other way round from every chat."""
    page = visit("stu.dent")
    box = page.locator("#chat-input textarea")
    box.click()
    box.type("What is a normal resting heart rate?")
    box.press("Shift+Enter")
    box.type("And in children?")
    assert box.input_value() == "What is a normal resting heart rate?\nAnd in children?", "Shift+Enter: a new line"
    assert page.locator("#chatbot .user").count() == 0, "nothing sent yet"
    box.press("Enter")
    sent = page.locator("#chatbot .user").last
    sent.wait_for(timeout=30_000)
    assert "And in children?" in sent.inner_text() and box.input_value() == "", "Enter sent both lines"
    page.locator("#chatbot .bot").last.get_by_text("Answered by").wait_for(timeout=90_000)


def test_a_student_chats_and_sees_a_streamed_labelled_answer(visit, bot_stack):
    page = visit("stu.dent")
    assert tabs(page) == {"Chat"}, "a student sees neither review nor admin"
    page.wait_for_selector("#serving-status >> text=Model server up", timeout=15_000)
    # Before anything is asked (issue 19, 7): the standing notice, no emergency steer, no Stop button.
    notice = page.locator("#chat-notice").inner_text()
    assert "For medical education only" in notice and "it may be an emergency" not in notice, notice
    assert not page.locator("#chat-stop").is_visible(), "Stop shows only while an answer is written"
    answers = []  # every sample of the answer's text, per question
    stop_while_writing = []  # whether Stop showed, each time the answer showed its cursor
    for question in ("What is hypertension?", "What causes hypertension?", "How is hypertension treated?",
                     "What is anaemia?", "How does metformin work?"):
        # The tiny model sometimes stops after a token or two, too fast to catch mid-answer, or says
        # nothing at all (there is nothing to rate then): ask again. A click while the last answer's
        # event still runs (its footer shows just before Stop hides) is dropped by Gradio, as a user's
        # would be: ask once Stop is gone.
        page.locator("#chat-stop").wait_for(state="hidden", timeout=30_000)
        before = page.locator("#chatbot .bot").count()
        page.locator("#chat-input textarea").fill(question)
        page.locator("#chat-send").click()
        answer = page.locator("#chatbot .bot").nth(before)
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if answer.count():
                seen.append(answer.inner_text())
                if seen[-1].endswith("▌"):
                    stop_while_writing.append(page.locator("#chat-stop").is_visible())
                if "Answered by" in seen[-1]:
                    break
            time.sleep(0.02)
        answers.append(seen)
        assert seen, f"no answer to {question!r} showed within 60 s (answers before it: {answers[:-1]})"
        final = seen[-1]
        assert "Answered by careloop-demo-tiny" in final and "not for clinical use" in final
        assert "For medical education only" in final
        # The chat's text can lag a tick behind the buttons (Gradio renders its Markdown asynchronously),
        # so the one sample of a short answer's cursor may come as Stop already hides: ask again then.
        if any(text.endswith("▌") for text in seen) and "gave no answer" not in final and any(stop_while_writing):
            break
    else:
        pytest.fail(f"no answer showed while it was being written (a cursor at its end) with Stop beside it: "
                    f"{answers}; Stop visible at each cursor: {stop_while_writing}")
    assert page.locator("#chat-input textarea").input_value() == ""
    assert any(stop_while_writing), "Stop showed while the answer was being written"
    page.locator("#chat-stop").wait_for(state="hidden", timeout=10_000)

    # The first answer ("What is hypertension?") lists the library pages it was given, numbered, each
    # with its publisher and a link that opens the page in a new tab; the footer stays under them.
    first = page.locator("#chatbot .bot").first
    assert first.inner_text().index("Sources") < first.inner_text().index("Answered by")
    links = first.locator("a[href^='http']")
    assert links.count() >= 1
    for index in range(links.count()):
        assert links.nth(index).get_attribute("target") == "_blank", links.nth(index).evaluate("e => e.outerHTML")
        assert "hypertension" in links.nth(index).inner_text().lower()
    assert re.search(r"NIH|CDC", first.inner_text())

    # Thumbs down under the answer opens the rating form; the rating reaches the store.
    page.locator("#chatbot").get_by_label("Dislike").last.click()
    send = page.locator("#rating-send").filter(visible=True)
    send.wait_for(timeout=15_000)
    # It scrolls into view by itself (issue 29, 9: it opened below the visible area).
    page.wait_for_function("() => [...document.querySelectorAll('#rating-send')].some((e) => {"
                           " const r = e.getBoundingClientRect();"
                           " return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; })", timeout=5_000)
    assert page.locator("#rating-thumbs").inner_text().split() == ["Your", "rating", "▲", "Helpful", "▼", "Not",
                                                                   "helpful"], "marks DejaVu Sans has, not emoji"
    page.locator("#rating-comment textarea").filter(visible=True).fill("Not an answer to the question.")
    send.click()
    wait_for(lambda: send.count() == 0, timeout=15, message="the rating form to close")
    wait_for(lambda: _ratings(bot_stack, "Not an answer to the question."), message="the rating stored")
    (rating,) = _ratings(bot_stack, "Not an answer to the question.")
    assert rating.thumbs == "down" and rating.user == "stu.dent"

    before = page.locator("#chatbot .bot").count()  # the questions above may have taken one or several tries
    page.locator("#chat-input textarea").fill("My father's face is drooping and his speech is slurred")
    page.locator("#chat-send").click()
    page.wait_for_function(f"document.querySelectorAll('#chatbot .bot').length > {before} && "
                           "[...document.querySelectorAll('#chatbot .bot')].pop().innerText.includes('Answered by')",
                           timeout=60_000)
    assert "it may be an emergency" in page.locator("#chatbot .bot").last.inner_text()

    shot(page, "chat")
    # The box takes at most the limit (its maxlength; the handler still refuses longer text from
    # scripts with the limit named: tests/bot/test_chat.py), so nothing over it is ever sent.
    counter = page.locator("#chat-counter")
    page.locator("#chat-input textarea").fill("x" * 1234)
    counter.filter(has_text="1,234 / 4,000 characters").wait_for(timeout=15_000)  # counted as it is typed
    page.locator("#chat-input textarea").fill("x" * 4001)
    assert page.locator("#chat-input textarea").input_value() == "x" * 4000, "the box stops at 4,000 characters"
    counter.filter(has_text="4,000 / 4,000 characters (0 left)").wait_for(timeout=15_000)
    assert "it may be an emergency" in page.locator("#chatbot .bot").last.inner_text(), "the chat stays on screen"
    only_local(page)


def test_an_answer_cut_off_by_a_reload_shows_as_interrupted_in_history(visit, bot_stack):
    """Issue 19, 5: an answer cut off by a page reload looked finished in history, with the normal
    footer. It is stored as interrupted and, reopened, says it was cut off."""
    from feedback.store import Message

    student = "stu.reload"
    accounts.add_user(bot_stack.sessions, student, "student", PASSWORD, actor="test")
    page = visit(student)
    def cut_off() -> list:
        with bot_stack.sessions() as session:
            return list(session.scalars(select(Message).where(Message.user == student, Message.interrupted)))

    # The tiny model sometimes ends after a word, too fast to catch mid-answer: the reload may land
    # just after the answer finished (then it is stored whole, rightly); try again until one is cut.
    for attempt in range(6):
        page.wait_for_selector("#header >> text=signed in as", timeout=30_000)
        before = page.locator("#chatbot .bot").count()
        page.locator("#chat-input textarea").fill(f"How is asthma treated? ({attempt})")
        page.locator("#chat-send").click()
        writing = page.wait_for_function(
            "(before) => { const all = document.querySelectorAll('#chatbot .bot'); const last = all[all.length - 1];"
            " return all.length > before && (last.innerText.endsWith('▌') ? 'writing' :"
            " last.innerText.includes('Answered by') ? 'done' : false); }", arg=before, timeout=60_000,
            polling=10).json_value()
        if writing == "writing":
            page.reload()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not cut_off():
                time.sleep(0.2)
            if cut_off():
                break
    else:
        pytest.fail("six answers finished before the page could be reloaded mid-answer")

    page.reload()  # the history list is read as the page loads
    page.wait_for_selector("#header >> text=signed in as", timeout=30_000)
    page.get_by_text("Your conversations").click()
    page.locator("#history input").click()
    page.get_by_role("option").first.click()
    page.locator("#history-open").click()
    shown = page.locator("#chatbot .bot").filter(has_text="Interrupted:")
    shown.first.wait_for(timeout=15_000)
    assert "this answer was cut off before it finished" in shown.first.inner_text()
    shot(page, "chat-interrupted")


def test_a_nurse_with_an_empty_queue_is_told_when_items_come_and_refreshes(visit, bot_stack):
    """Issue 19, 8: the empty queue said items arrive "later", had no refresh and showed the whole
    scoring form. It says when the next fill is due, hides the form, and Refresh brings new items."""
    nurse = "nurse.empty"
    accounts.add_user(bot_stack.sessions, nurse, "nurse", PASSWORD, actor="test")
    while (other := queue.next_item(bot_stack.sessions, nurse)) is not None:
        queue.skip(bot_stack.sessions, other.id, nurse)  # other tests' items: this nurse's queue is empty
    queue.record_fill(bot_stack.redis_url, scheduled=True)  # as beat's periodic fill notes it
    page = visit(nurse)
    page.get_by_role("tab", name="Review").click()
    prompt = page.locator("#review-prompt")
    prompt.filter(has_text="The queue is empty").wait_for(timeout=30_000)
    assert re.search(r"New items are added every 5 minutes \(the next fill is due about \d\d:\d\d UTC; the last "
                     r"ran at \d\d:\d\d:\d\d UTC\)", prompt.inner_text()), prompt.inner_text()
    assert not page.locator("#review-choice").is_visible() and not page.locator("#review-submit").is_visible()
    shot(page, "review-empty")
    queue.add_item(bot_stack.sessions, "Refreshed question: what is gout?", "Joint inflammation from urate.",
                   "A skin rash.", "med-v0002", "med-v0001", labels_needed=1, prompt_origin="seed")
    page.locator("#review-refresh").click()
    prompt.get_by_text("Refreshed question").wait_for(timeout=15_000)
    assert page.locator("#review-choice").is_visible() and not page.locator("#review-refresh").is_visible()


def _new_nurse(stack, nurse: str) -> None:
    """A nurse account whose queue holds only what the test adds (other tests' items skipped)."""
    accounts.add_user(stack.sessions, nurse, "nurse", PASSWORD, actor="test")
    while (other := queue.next_item(stack.sessions, nurse)) is not None:
        queue.skip(stack.sessions, other.id, nurse)


def test_a_nurse_labels_with_the_keyboard_and_each_key_names_the_answer_on_its_side(visit, bot_stack):
    """Keys 1 and 2 choose the answer shown on the left and on the right, whichever of the item's
    answers the blind order put there: the stored choice names that answer. Key 3 is a tie. The
    nurse judges until both orders came up under a side key (each showing is a coin toss)."""
    nurse = "nurse.keys"
    _new_nurse(bot_stack, nurse)
    source = {"number": 1, "doc_id": "medquad-x", "title": "Asthma: treatment", "publisher": "NIH MedlinePlus",
              "url": "https://medlineplus.gov/asthma.html", "text": "Inhaled corticosteroids control asthma.",
              "score": 1.0}
    for index in range(14):
        queue.add_item(bot_stack.sessions, f"Keyboard question {index}: how is asthma treated?",
                       f"Inhaled corticosteroids ({index}).", f"Antibiotics ({index}).", "med-v0002", "med-v0001",
                       labels_needed=1, prompt_origin="seed", passages=[source])
    page = visit(nurse)
    assert tabs(page) == {"Chat", "Review"}
    open_review(page)
    # The passages both answers were given, with their text, to check the answers against.
    shown_sources = page.locator("#review-sources")
    shown_sources.get_by_text("Inhaled corticosteroids control asthma.").wait_for(timeout=15_000)
    assert "Sources both answers were given" in shown_sources.inner_text()
    assert shown_sources.get_by_role("link", name="Asthma: treatment").get_attribute("target") == "_blank"
    judged = {}  # question number -> (key, left text, right text)
    orders_under_a_side_key = set()
    for index in range(14):
        key = "123"[index] if index < 3 else "12"[index % 2]
        question = int(re.search(r"Keyboard question (\d+)", page.locator("#review-prompt").inner_text()).group(1))
        left, right = (page.locator(f"#review-{side}-text").inner_text().strip() for side in ("left", "right"))
        if index == 1:
            shot(page, "review")
        judge_with_keys(page, key)
        judged[question] = (key, left, right)
        if key != "3":
            orders_under_a_side_key.add("ab" if left.startswith("Inhaled") else "ba")
        if index >= 2 and orders_under_a_side_key == {"ab", "ba"}:
            break
    assert orders_under_a_side_key == {"ab", "ba"}, "14 showings all in one order: the order is not blind"

    def stored() -> list[Comparison]:
        with bot_stack.sessions() as session:
            return list(session.scalars(select(Comparison).where(Comparison.annotator == nurse)))

    wait_for(lambda: len(stored()) == len(judged), message=f"{len(judged)} judgments in the store")
    for comparison in stored():
        key, left, right = judged[int(re.search(r"Keyboard question (\d+)", comparison.prompt).group(1))]
        assert comparison.shown_order == ("ab" if left == comparison.response_a else "ba")
        if key == "3":
            assert comparison.choice == "tie"
        else:
            chosen = {"a": comparison.response_a, "b": comparison.response_b}[comparison.choice]
            assert chosen == (left if key == "1" else right), (key, left, right, comparison.choice)
    page.locator("#review-figures").get_by_text(f"{len(judged)} judged in this tab (").wait_for(timeout=15_000)
    # Issue 19, 9: the safety categories in words, and Ctrl+Enter named for the correction box.
    assert "Ctrl+Enter from the correction box" in page.locator("#tab-review").inner_text()
    page.locator("#review-safety-category input").click()
    categories = page.get_by_role("option").all_inner_texts()
    assert "Harmful advice" in categories and "Missed emergency" in categories, categories
    assert not [shown for shown in categories if "_" in shown], categories
    page.keyboard.press("Escape")
    only_local(page)


def test_a_nurse_changes_her_last_judgment_and_her_next_one_lands_on_the_next_item(visit, bot_stack):
    """Issue 31, 2: "Change my last judgment" shows item X again, with the passages its answers were
    given; Submit replaces X's judgment, and the judgment after it is stored on the next item Y. (The
    handler once failed after marking X as the item on screen, with Y still showing: the nurse's
    judgment of Y was stored on X and Y was never judged.)"""
    nurse = "nurse.amends"
    _new_nurse(bot_stack, nurse)
    passage = {"number": 1, "doc_id": "medquad-gout", "title": "Gout", "publisher": "NIH MedlinePlus",
               "url": "https://medlineplus.gov/gout.html", "text": "Gout comes from urate crystals in a joint.",
               "score": 1.0}
    x = queue.add_item(bot_stack.sessions, "Amend question X: what causes gout?", "Urate crystals [1].",
                       "A virus.", "med-v0002", "med-v0001", labels_needed=1, prompt_origin="seed", passages=[passage])
    y = queue.add_item(bot_stack.sessions, "Amend question Y: what is angina?", "Chest pain from the heart.",
                       "A rash.", "med-v0002", "med-v0001", labels_needed=1, prompt_origin="seed")
    page = visit(nurse)
    open_review(page)
    prompt = page.locator("#review-prompt")
    prompt.get_by_text("Amend question X").wait_for(timeout=15_000)
    judge_with_keys(page, "3")  # X: a tie
    prompt.get_by_text("Amend question Y").wait_for(timeout=15_000)

    page.locator("#review-amend").click()
    prompt.get_by_text("changing your last judgment").wait_for(timeout=15_000)
    assert "Amend question X" in prompt.inner_text()
    page.locator("#review-sources").get_by_text("Gout comes from urate crystals").wait_for(timeout=15_000)
    assert not [t for t in page.locator(".toast-body").all_inner_texts() if "error" in t.lower()]
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("4")  # X: both bad, replacing the tie
    page.keyboard.press("Enter")
    prompt.get_by_text("Amend question Y").wait_for(timeout=15_000)
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("3")  # Y: a tie
    page.keyboard.press("Enter")
    prompt.filter(has_text="The queue is empty").wait_for(timeout=30_000)

    def stored() -> dict[int, str]:
        with bot_stack.sessions() as session:
            return {row.review_item_id: row.choice for row in session.scalars(
                select(Comparison).where(Comparison.annotator == nurse))}

    wait_for(lambda: stored() == {x: "both_bad", y: "tie"}, timeout=30,
             message=f"X both bad and Y a tie (stored: {stored()})")


def test_an_admin_sees_the_runs_and_rolls_back(visit, bot_stack):
    settings = bot_stack.settings()
    registry = Registry(bot_stack.sessions, "careloop-demo-tiny")
    client = open_client(settings)
    registry.register("med-v0001", bot_stack.server.adapter_dir / "med-v0001", actor="test")
    rollout.promote(registry, "med-v0001", client, actor="test")

    page = visit("ad.min")
    assert tabs(page) >= {"Chat", "Admin"} and "Review" not in tabs(page)
    page.get_by_role("tab", name="Admin").click()
    page.locator("#versions").get_by_text("med-v0001").filter(visible=True).first.wait_for(timeout=30_000)
    # A run finishes while the admin page is open (issue 29, 7: its version showed only after a reload)
    registry.register("med-v0002", bot_stack.server.adapter_dir / "med-v0002", actor="test")
    rollout.promote(registry, "med-v0002", client, actor="test")
    run_id = runs.start_run(bot_stack.sessions, "beat", {"sft": {"max_steps": 20}})
    runs.finish_run(bot_stack.sessions, run_id, status="promoted", step="publish", adapter_version="med-v0002")
    page.get_by_role("tab", name="Training runs").click()
    runs_table = page.locator("#runs")
    runs_table.get_by_text("med-v0002").filter(visible=True).first.wait_for(timeout=30_000)
    assert "promoted" in runs_table.inner_text()
    page.get_by_role("tab", name="Adapter versions").click()
    page.locator("#versions").get_by_text("med-v0002").filter(visible=True).first.wait_for(timeout=30_000)
    page.locator("#versions").get_by_text("live", exact=True).filter(visible=True).first.wait_for(timeout=30_000)

    shot(page, "admin-versions")
    page.locator("#action-rollback").click()
    (page.locator("#confirm-panel").get_by_text("med-v0001 becomes live again").filter(visible=True)
     .wait_for(timeout=15_000))
    shot(page, "admin")
    assert registry.live().name == "med-v0002", "nothing happens before the confirmation"
    page.locator("#action-confirm").click()
    page.locator("#admin-message").get_by_text("Rolled back").wait_for(timeout=60_000)
    assert registry.live().name == "med-v0001" and registry.get("med-v0002").status == "rejected"
    try:
        answer = client.chat([{"role": "user", "content": "What is hypertension?"}], max_tokens=4)
        assert answer.model == "med-v0001", "students are answered by the restored version"
        only_local(page)
    finally:  # the shared stack's base model answers again for the tests after this one
        registry.retire("med-v0001", actor="test")
        client.unload_adapter("med-v0001")
        client.close()
