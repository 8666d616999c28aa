"""Grounded prompts, the one place they are written (the chat, training and evaluation all use
``grounded_messages``), and a lexical check of an answer's citations.

The passages go into the last user message, numbered as they are cited, with the instruction to
cite them as [n] and to say so when they do not answer the question. A user message rather than a
system one: some chat templates (Gemma's) refuse a system message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from library.passages import STOPWORDS, Passage, tokens

INSTRUCTION = ("Answer the question using the numbered sources above. After each statement, cite its source "
               "as [1], [2] and so on. If the sources do not answer the question, say so.")
NO_SOURCE = ("No passage in the library matched this question, so this answer cites no source: check it "
             "against a trusted reference.")
_CITATION = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def trimmed(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a sentence end where there is one."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[:end + 1] if end > limit // 2 else cut.rsplit(" ", 1)[0] + " …"


def grounded_question(question: str, passages: list[Passage], passage_chars: int) -> str:
    sources = "\n\n".join(f"[{p.number}] {p.title} ({p.publisher}): {trimmed(p.text, passage_chars)}"
                          for p in passages)
    return f"Sources:\n{sources}\n\n{INSTRUCTION}\n\nQuestion: {question}"


def grounded_messages(messages: list[dict[str, str]], passages: list[Passage],
                      passage_chars: int) -> list[dict[str, str]]:
    """``messages`` with the last (user) one carrying ``passages``; unchanged when there are none."""
    if not passages or not messages:
        return messages
    *history, last = messages
    return [*history, {**last, "content": grounded_question(last["content"], passages, passage_chars)}]


def cited_numbers(answer: str) -> list[int]:
    """The source numbers ``answer`` cites, in order of first citation."""
    found: list[int] = []
    for group in _CITATION.findall(answer):
        for number in (int(part) for part in group.split(",")):
            if number not in found:
                found.append(number)
    return found


@dataclass(frozen=True)
class CitationSupport:
    """Of the answer's sentences that cite a passage it was given, how many the passage supports:
    at least half the sentence's content words (stemmed, stopwords left out) occur in it. Lexical:
    it sees shared words, not whether the passage says the same thing."""

    cited: int
    supported: int

    @property
    def rate(self) -> float | None:
        return self.supported / self.cited if self.cited else None


def citation_support(answer: str, passages: list[Passage]) -> CitationSupport:
    given = {p.number: set(tokens([p.text])[0]) for p in passages}
    cited = supported = 0
    for sentence in _SENTENCE.split(answer):
        numbers = [n for n in cited_numbers(sentence) if n in given]
        claim = {word for word in tokens([_CITATION.sub(" ", sentence)], STOPWORDS)[0] if len(word) > 2}
        if not numbers or not claim:
            continue
        cited += 1
        source_words = set().union(*(given[n] for n in numbers))
        supported += len(claim & source_words) >= len(claim) / 2
    return CitationSupport(cited, supported)
