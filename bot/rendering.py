"""Untrusted text as the pages render it, and the library passages an answer was given, listed as its
numbered sources (under a student's answer: titles linked to their pages; for reviewers: each passage
quoted, to check claims against).

One rule for every page (issue 31, 4 and issue 29, 8). What people and documents wrote is shown as
written (``literal``): Markdown turned "CYP2D6*4 ... CYP2D6*10" into italics, and Gradio's sanitiser
keeps ``style`` attributes, forms, password fields, ``<details>`` and data-URL images, so a question
could cover the review page with a fake "session expired" form. A model's answer keeps the formatting
it means (emphasis, lists, headings: ``untrusted``) but no raw HTML, link, image or bare URL of its
own, and no emphasis inside a word. The only links on a page are careloop's own and the library's
source URLs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from library.grounding import NO_SOURCE
from library.passages import Passage

_INERT = re.compile(r"([\\<>\[\]])")  # raw HTML and autolinks (<...>), links and images ([...](...))
_INTRAWORD_STAR = re.compile(r"(?<=[^\W_])\*(?=[^\W_])")  # CYP2D6*4: a name, not emphasis
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark: Markdown may read any of them
_BARE_LINK = re.compile(r"(?i)(\b(?:https?|ftp|mailto)|\bwww)([:.])|(@)")  # what GFM links by itself
NO_PASSAGE_FOR_REVIEWERS = ("_The library had no passage relevant to this question: the answers were given no sources "
                            "(any citation in them is made up)._")


def untrusted(markdown: str) -> str:
    """A model's answer: its emphasis, lists and headings, with every raw HTML tag, link, image
    (``![x](/logout)`` would make the browser fetch a careloop URL), bare URL and star inside a word
    shown as typed."""
    return _unlinked(_INTRAWORD_STAR.sub(r"\\*", _INERT.sub(r"\\\1", markdown)))


def literal(text: str) -> str:
    """What a student, a clinician or a document wrote, shown exactly as written: every punctuation
    mark escaped (CommonMark shows an escaped mark as itself), so nothing in it is Markdown or HTML."""
    return _PUNCTUATION.sub(r"\\\1", text)


def _unlinked(escaped: str) -> str:  # literal() needs none: its ':', '.' and '@' are escaped
    """``https://``, ``www.`` and ``name@host`` escaped, so Markdown's autolinks leave them as text."""
    return _BARE_LINK.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else "\\@", escaped)


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
        title = literal(passage.title)
        link = f"[{title}]({passage.url.replace(' ', '%20').replace(')', '%29')})" if passage.url else title
        publisher = literal(passage.publisher)
        if quoted:
            text = "\n".join(f"> {line}" for line in literal(passage.text).splitlines())
            parts.append(f"**[{passage.number}]** {link} · {publisher}\n\n{text}")
        else:
            parts.append(f"{passage.number}. {link} · {publisher}")
    return ("\n\n" if quoted else "\n").join(parts)
