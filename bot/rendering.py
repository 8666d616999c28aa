"""Untrusted text as the pages render it: the model's and users' markdown with images shown as text,
and the library passages an answer was given, listed as its numbered sources (under a student's
answer: titles linked to their pages; for reviewers: each passage quoted, to check claims against).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from library.grounding import NO_SOURCE
from library.passages import Passage

_IMAGE = re.compile(r"!(?=\[)")
_MARKDOWN_SPECIAL = re.compile(r"([\\\[\]*_`<>])")
NO_PASSAGE_FOR_REVIEWERS = ("_The library had no passage relevant to this question: the answers were given no sources "
                            "(any citation in them is made up)._")


def without_images(markdown: str) -> str:
    """Student (and model) text as the pages render it: markdown images shown as text
    (``![x](/logout)`` would otherwise make the browser fetch a URL of careloop's own origin, which
    its Content-Security-Policy allows); Gradio's sanitiser already removes HTML."""
    return _IMAGE.sub(r"\\!", markdown)


def sources_markdown(passages: Sequence[Passage] | None, *, quoted: bool) -> str:
    """The passages an answer was given, numbered as it cites them: empty when it was given none to
    search (None). ``quoted``: for reviewers, each passage's text quoted under its title; otherwise the
    list under a student's answer, each title linked to its page (the browser opens it in a new tab)."""
    if passages is None:
        return ""
    if not passages:
        return NO_PASSAGE_FOR_REVIEWERS if quoted else f"_{NO_SOURCE}_"
    heading = ("**Sources both answers were given**: check their claims (and citations [n]) against these." if quoted
               else "**Sources**")
    parts = [heading]
    for passage in passages:
        title = _MARKDOWN_SPECIAL.sub(r"\\\1", passage.title)
        link = f"[{title}]({passage.url.replace(' ', '%20').replace(')', '%29')})" if passage.url else title
        if quoted:
            text = "\n".join(f"> {line}" for line in without_images(passage.text).splitlines())
            parts.append(f"**[{passage.number}]** {link} · {passage.publisher}\n\n{text}")
        else:
            parts.append(f"{passage.number}. {link} · {passage.publisher}")
    return ("\n\n" if quoted else "\n").join(parts)
