"""A dataset export downloaded from the bot: the copy Gradio serves lies in the bot's own data
directory, readable by its owner only, and is deleted after CARELOOP_BOT_DOWNLOAD_SECONDS (the export
itself stays, owner-only, in the data directory)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gradio_client import Client
from processes import TOKEN, start_bot, wait_for
from support import PASSWORD

from careloop.redis_server import free_port


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_export_download_is_private_and_deleted_after_its_time(bot_stack, tmp_path):
    home = tmp_path / "bot"
    previous = os.umask(0o022)  # the bot inherits the usual umask
    try:
        bot = start_bot(home, free_port(), database_url=bot_stack.database_url, redis_url=bot_stack.redis_url,
                        serving_url=bot_stack.server.url, control_token=TOKEN, base_model=str(bot_stack.model_dir),
                        bot_download_seconds="3")
    finally:
        os.umask(previous)
    try:
        downloaded = Path(Client(bot.url, auth=("ad.min", PASSWORD), verbose=False)
                          .predict("dpo", "jsonl", api_name="/admin_export"))
        cache = home / "gradio-cache"
        (served,) = cache.rglob(downloaded.name)
        assert (_mode(cache), _mode(served.parent), _mode(served)) == (0o700, 0o700, 0o600)
        kept = home / "exports" / downloaded.name
        assert _mode(kept.parent) == 0o700 and _mode(kept) == 0o600
        assert all(_mode(p) == (0o700 if p.is_dir() else 0o600) for p in kept.parent.rglob("*"))
        wait_for(lambda: not served.exists(), timeout=60, message="the served copy deleted after 3 s")
        assert kept.exists()
    finally:
        bot.stop()


def test_an_export_is_served_to_the_session_that_made_it_only(bot_stack):
    """Issue 31, 10: an export's URL was a bearer token: any signed-in student or nurse who had it got
    the clinicians' dataset until the copy was deleted. Gradio's file route now serves a handed-out
    file to the session it was made for; every other session, even the same admin's, gets 404."""
    import httpx

    admin = Client(bot_stack.url, auth=("ad.min", PASSWORD), verbose=False)
    downloaded = Path(admin.predict("dpo", "jsonl", api_name="/admin_export"))  # fetched by its own session
    (served,) = (bot_stack.home / "bot" / "gradio-cache").rglob(downloaded.name)
    route = f"/gradio_api/file={served}"
    for username in ("stu.dent", "nurse.a", "ad.min"):
        with httpx.Client(base_url=bot_stack.url, timeout=10) as other:
            assert other.post("/login", data={"username": username, "password": PASSWORD}).status_code == 200
            refused = other.get(route)
            assert refused.status_code == 404 and "session that made them" in refused.text, (username, refused.text)
    assert served.exists(), "the admin's copy is still there for her"
