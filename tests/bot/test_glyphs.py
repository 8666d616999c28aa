"""Every character the pages put on screen has a glyph in DejaVu Sans, the one font a minimal Linux
(Debian's fonts-dejavu-core) brings: 👍 and 👎 showed as empty boxes there (issue 19, 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parents[2] / "bot"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def test_every_character_of_the_pages_renders_without_an_emoji_font():
    from fontTools.ttLib import TTFont

    if not DEJAVU.exists():
        pytest.fail(f"{DEJAVU} is missing: `apt-get install fonts-dejavu-core` (`make test` installs it as root)")
    covered = TTFont(DEJAVU).getBestCmap()
    shown = {(path.relative_to(BOT.parent), char) for path in BOT.rglob("*.py")
             for char in path.read_text(encoding="utf-8") if ord(char) > 127}
    assert shown, "the pages use some characters beyond ASCII (the cursor, the rating marks)"
    missing = sorted((str(path), f"U+{ord(char):04X} {char}") for path, char in shown if ord(char) not in covered)
    assert not missing, f"no glyph in DejaVu Sans (use a character it has): {missing}"


def test_chinese_japanese_and_korean_text_has_a_font_on_this_machine():
    """A student's question in Chinese showed as empty boxes in chromium here (issue 29, 9): the pages
    show text as written, in the reader's fonts, so the machine's browser needs a CJK font."""
    import subprocess

    found = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True).stdout.strip()
    assert found, "no font with Chinese glyphs: `apt-get install fonts-noto-cjk` (`make system-packages` as root)"
