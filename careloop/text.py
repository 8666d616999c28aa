"""Text as every database column can hold it, for each domain that stores what people or files wrote."""

from __future__ import annotations

import re

# NUL (PostgreSQL refuses it in text) and a UTF-16 surrogate on its own (not UTF-8 encodable); a Python
# str holds surrogates only unpaired (a pair decodes to one character).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` without NUL characters and with each lone surrogate shown as U+FFFD: what was written is
    kept, and no database refuses it (one refused event used to hold back every event sent with it)."""
    return _UNSTORABLE.sub(lambda match: "" if match.group() == "\x00" else "\ufffd", text)
