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
