"""The admin's first hour in a real headless Chromium (issue 19): accounts made on the Admin page
sign in, training runs followed as they move, and a second start refused with the run it would
collide with; course notes uploaded to the library, cited in a student's answer, and removed
(issue 20); a tab left open stays true while versions, runs and audit entries come in (issue 29, 7)."""

from __future__ import annotations

import re
import time
import uuid

import redis
from e2e_browser import ask, only_local, shot, sign_in, tabs

from adapters.registry import Registry
from careloop import audit
from trainer import runs
from trainer.schedule import training_lock
from trainer.tasks import REQUEST_KEY


def _open_admin_tab(page, name: str) -> None:
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name=name).click()


def test_an_admin_adds_a_nurse_who_signs_in_with_the_shown_password(visit, browser, bot_stack):
    admin = visit("ad.min")
    _open_admin_tab(admin, "Accounts")
    admin.locator("#accounts").get_by_text("stu.dent").filter(visible=True).first.wait_for(timeout=30_000)
    admin.locator("#account-new-username textarea, #account-new-username input").first.fill("nurse.first")
    admin.locator("#account-new-role input").fill("nurse")
    admin.keyboard.press("Enter")
    admin.locator("#account-add").click()
    message = admin.locator("#account-message")
    message.get_by_text("nurse.first").wait_for(timeout=30_000)
    password = message.locator("code").inner_text().strip()
    assert len(password) >= 10 and "shown once" in message.inner_text()
    admin.locator("#accounts").get_by_text("nurse.first").filter(visible=True).first.wait_for(timeout=15_000)
    shot(admin, "admin-accounts")

    nurse = sign_in(browser, bot_stack.url, "nurse.first", password)
    try:
        panel = nurse.locator("#password-panel")
        panel.get_by_text("Choose your own password").wait_for(timeout=15_000)
        assert tabs(nurse) <= {""}, "no page opens with a temporary password"
        nurse.locator("#password-current input").fill(password)
        nurse.locator("#password-new input").fill("nurse-first-own-password")
        nurse.locator("#password-repeat input").fill("nurse-first-own-password")
        nurse.locator("#password-submit").click()
        nurse.get_by_role("tab", name="Review").wait_for(timeout=15_000)
        assert not panel.is_visible() and tabs(nurse) == {"Chat", "Review"}
        only_local(nurse)
    finally:
        nurse.context.close()
    with bot_stack.sessions() as session:
        events = [(e.actor, e.action) for e in reversed(audit.recent(session)) if e.target == "nurse.first"]
    assert events == [("bot:ad.min", "user.add"), ("nurse.first", "user.change_password")]


# The admin page follows its open tab every CARELOOP_BOT_STATUS_REFRESH_SECONDS (5 s in the stack); the
# margin is for a Dataframe's redraw under the full suite (over 15 s seen: the library test below).
FOLLOWED_WITHIN_MS = 30_000


def test_an_open_admin_tab_shows_what_comes_in_without_a_click(visit, bot_stack):
    """Issue 29, 7: a run that finished while the Adapter versions tab was open left it saying "No
    versions yet" until the admin clicked away and back. Nothing is clicked here after each tab opens."""
    registry = Registry(bot_stack.sessions, "careloop-demo-tiny")
    name = f"med-open-{uuid.uuid4().hex[:6]}"
    page = visit("ad.min")
    page.get_by_role("tab", name="Admin").click()  # Adapter versions, the first tab, opens with it
    versions = page.locator("#versions")
    versions.get_by_text("parent", exact=True).filter(visible=True).first.wait_for(timeout=30_000)  # loaded
    assert name not in versions.inner_text()
    try:
        registry.register(name, bot_stack.server.adapter_dir / "med-v0001", actor="test")  # a run's candidate
        versions.get_by_text(name).filter(visible=True).first.wait_for(timeout=FOLLOWED_WITHIN_MS)
        assert "candidate" in versions.inner_text()
        page.locator("#version-select input").fill(name)  # and it can be chosen, to be promoted
        page.get_by_role("option", name=name).wait_for(timeout=15_000)
        page.keyboard.press("Escape")

        page.get_by_role("tab", name="Training runs").click()
        table = page.locator("#runs")
        table.get_by_text("why not promoted", exact=True).filter(visible=True).first.wait_for(timeout=30_000)
        run_id = runs.start_run(bot_stack.sessions, "beat", {})
        runs.finish_run(bot_stack.sessions, run_id, status="candidate", step="publish", adapter_version=name)
        table.get_by_text(name).filter(visible=True).first.wait_for(timeout=FOLLOWED_WITHIN_MS)
        assert "promote it yourself" in table.inner_text()

        page.get_by_role("tab", name="Audit").click()
        entries = page.locator("#audit")
        entries.get_by_text(name).filter(visible=True).first.wait_for(timeout=30_000)  # its registration
        registry.reject(name, actor="test", reason="seen on the open page")
        entries.get_by_text("seen on the open page").filter(visible=True).first.wait_for(timeout=FOLLOWED_WITHIN_MS)
    finally:
        if any(v.name == name and v.status == "candidate" for v in registry.versions()):
            registry.reject(name, actor="test", reason="the test is over")  # no candidate left for other tests
    only_local(page)


def test_a_run_moves_on_the_page_and_a_second_start_is_refused_naming_it(visit, bot_stack):
    run_id = runs.start_run(bot_stack.sessions, "beat", {})

    def at(done: int) -> None:
        runs.update_run(bot_stack.sessions, run_id, step="sft",
                        progress={"step": "sft", "done": done, "total": 16, "started": time.time() - 10 * done})

    broker = redis.Redis.from_url(bot_stack.redis_url)
    broker.delete("training", REQUEST_KEY)  # what earlier tests' admin calls (the role sweep) left queued
    queued_before = broker.llen("training")
    page = visit("ad.min")
    table = page.locator("#runs")
    try:
        with training_lock(bot_stack.redis_url):  # what the training worker holds while the run works
            at(3)
            _open_admin_tab(page, "Training runs")
            table.get_by_text("sft 3/16").filter(visible=True).first.wait_for(timeout=30_000)
            first = table.inner_text()
            at(8)  # no click: the page follows the run by itself
            table.get_by_text("sft 8/16").filter(visible=True).first.wait_for(timeout=20_000)
            shown = table.inner_text()
            assert shown != first and ("about " in shown or "under a minute" in shown), "percent and ETA moving"
            page.locator("#train-start").click()
            page.locator(".toast-body").get_by_text(f"run {run_id} (started by beat) is running: sft 8/16").wait_for(
                timeout=15_000)
            shot(page, "admin-run-progress")
        runs.finish_run(bot_stack.sessions, run_id, status="interrupted")

        page.locator("#train-start").dblclick()  # a double click queues one run, not two
        page.locator(".toast-body").get_by_text("Training run queued").wait_for(timeout=15_000)
        table.get_by_text("queued", exact=True).filter(visible=True).first.wait_for(timeout=15_000)
        page.locator("#train-start").click()  # and a later click, once the first has answered
        refused = page.locator(".toast-body").get_by_text("is already queued")
        refused.wait_for(timeout=15_000)
        assert "requested by ad.min at" in refused.inner_text()
        assert broker.llen("training") == queued_before + 1
        assert "queued" not in page.locator("#admin-message").inner_text(), "a notice that fades, not a line that stays"
    finally:
        broker.delete("training", REQUEST_KEY)  # no training worker runs in this stack
        broker.close()
    only_local(page)


def _upload(page, *paths) -> None:
    with page.expect_file_chooser() as chooser:
        page.locator("#library-add").click()
    chooser.value.set_files([str(path) for path in paths])


def test_an_admin_uploads_notes_a_student_gets_them_cited_and_the_admin_removes_them(visit, bot_stack, tmp_path):
    admin = visit("ad.min")
    _open_admin_tab(admin, "Library")
    admin.locator("#library-note").get_by_text("MedQuAD pages").wait_for(timeout=30_000)
    message, table = admin.locator("#library-message"), admin.locator("#library")
    notes = tmp_path / "ward-protocol.md"
    notes.write_text("# Ward protocol\n\nZolendronate infusions run over at least 15 minutes on our ward.\n")
    latin = tmp_path / "fievre.md"
    latin.write_bytes("# Fièvre\n\nFièvre et céphalée.".encode("latin-1"))

    _upload(admin, notes, latin)  # one bad file: the batch is refused, with the reason on the page
    message.get_by_text("fievre.md: is not text (not UTF-8)").wait_for(timeout=30_000)
    assert "Nothing was added" in message.inner_text() and "ward-protocol.md" not in table.inner_text()
    _upload(admin, notes)
    # The handler's own outcome, once the search index is rebuilt: case-sensitive, or the first batch's "Nothing was
    # added to the library" would do, and the table, which follows the library by itself, shows the document sooner.
    message.get_by_text(re.compile("^Added to the library")).first.wait_for(timeout=90_000)
    # Same event, but the Dataframe redraws after the Markdown: under the full suite that took over 15 s (stop 35).
    table.get_by_text("ward-protocol.md").filter(visible=True).first.wait_for(timeout=60_000)
    assert "Ward protocol" in table.inner_text() and "bot:ad.min" in table.inner_text()
    shot(admin, "admin-library")
    cache = bot_stack.bot.log.parent / "gradio-cache"
    assert not [*cache.rglob("ward-protocol.md"), *cache.rglob("fievre.md")], "uploads are deleted once read"

    student = visit("stu.dent")
    answer = ask(student, "What does the ward protocol say about zolendronate infusions?")
    assert "Sources" in answer and "Ward protocol · added by bot:ad.min (ward-protocol.md)" in answer, answer

    admin.locator("#library-select input").fill("Ward protocol")
    admin.get_by_role("option", name="Ward protocol").first.click()
    admin.locator("#library-remove").click()
    admin.locator("#library-confirm-panel").get_by_text("answers stop citing it").wait_for(timeout=15_000)
    admin.locator("#library-confirm").click()
    message.get_by_text("Removed document").wait_for(timeout=90_000)
    assert "ward-protocol.md" not in table.inner_text()
    answer = ask(student, "What does the ward protocol say about zolendronate infusions?")
    assert "ward-protocol.md" not in answer, answer
    with bot_stack.sessions() as session:
        events = [(e.actor, e.action) for e in reversed(audit.recent(session)) if e.action.startswith("library.")]
    assert events[-2:] == [("bot:ad.min", "library.add"), ("bot:ad.min", "library.remove")]
    only_local(admin)
