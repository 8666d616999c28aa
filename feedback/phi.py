"""Scrub obvious identifiers from free text before it is stored or exported.

Replaces emails, phone numbers (libphonenumber), record/ID numbers, dates of birth, street
addresses and URLs that carry identifiers with typed placeholders. Clinical content stays:
doses (500 mg), lab values (Na 140 mmol/L), blood pressure (140/90), ages (72-year-old) and
ordinary dates. This is a safety net for obvious identifiers, not a de-identification guarantee.
"""

from __future__ import annotations

import re

import phonenumbers

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
# URLs with a query string, or a path segment holding digits (record links, patient portals).
URL = re.compile(r"\bhttps?://[^\s<>\"']+", re.IGNORECASE)
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DATE = (rf"(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}}|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
         rf"|\d{{1,2}}\s+{_MONTH}\.?\s+\d{{4}})")
DATE_OF_BIRTH = re.compile(rf"\b(?:d\.?o\.?b\.?|date of birth|born(?: on)?|birth ?date)\s*[:#]?\s*{_DATE}",
                           re.IGNORECASE)
RECORD_NUMBER = re.compile(
    r"\b(?:mrn|medical record(?: number| no\.?)?|record(?: number| no\.?| #)?|patient id|chart(?: number| no\.?)?"
    r"|ssn|social security(?: number)?|insurance(?: id| number| no\.?)?|member id|nhs(?: number)?|account(?: number| no\.?)?)"
    r"\b\s*[:#]?\s*(?:is\s+)?(?=[A-Z-]*\d)[A-Z0-9][A-Z0-9-]{3,}\b", re.IGNORECASE)
SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_STREET = (r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|terrace|way"
           r"|highway|hwy|parkway|pkwy|circle|cir)")
ADDRESS = re.compile(rf"\b\d{{1,6}}\s+(?:[A-Z][a-z]+\.?\s+){{1,3}}{_STREET}\b\.?(?:,?\s+(?:apt|suite|unit)\.?\s*#?\w+)?",
                     re.IGNORECASE)


def _url(match: re.Match) -> str:
    url = match.group(0)
    path = url.split("://", 1)[1].partition("/")[2]
    return "[URL]" if ("?" in url or re.search(r"\d{3,}", path)) else url


def scrub(text: str, region: str = "US") -> str:
    """``text`` with identifiers replaced by [EMAIL], [URL], [DOB], [ID], [PHONE], [ADDRESS]."""
    if not text:
        return text
    text = URL.sub(_url, text)
    text = EMAIL.sub("[EMAIL]", text)
    text = DATE_OF_BIRTH.sub("[DOB]", text)
    text = RECORD_NUMBER.sub("[ID]", text)
    text = SSN.sub("[ID]", text)
    # Phone numbers: libphonenumber's matcher only accepts valid numbers, so doses, lab values and
    # blood pressures do not match; replace from the end to keep offsets valid.
    for match in reversed(list(phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID))):
        text = text[:match.start] + "[PHONE]" + text[match.end:]
    return ADDRESS.sub("[ADDRESS]", text)
