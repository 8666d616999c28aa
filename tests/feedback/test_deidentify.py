"""PHI scrubbing on realistic clinical text: identifiers go, clinical facts stay, and the scrubber
meets its precision and recall on the labelled corpus."""

import pytest

from bench.deidentify import evaluate, load_corpus
from feedback.deidentify import scrub, scrub_many

NOTE = ("Mrs. Alvarez (DOB: 03/14/1962, MRN 44829173) lives at 1420 Oak Grove Avenue, Apt 5B. "
        "Reach her at (415) 555-0132 or maria.alvarez@example.com; her daughter is on +44 20 7946 0958. "
        "Portal: https://portal.example-hospital.org/patients/884213?visit=2. SSN 123-45-6789.")


def test_a_clinic_note_loses_every_identifier():
    cleaned = scrub(NOTE)
    for identifier in ("03/14/1962", "44829173", "1420 Oak Grove", "555-0132", "maria.alvarez", "7946",
                       "884213", "123-45-6789"):
        assert identifier not in cleaned, identifier
    for placeholder in ("[DOB]", "[ID]", "[ADDRESS]", "[PHONE]", "[EMAIL]", "[URL]"):
        assert placeholder in cleaned, placeholder
    assert cleaned.startswith("Mrs. [NAME] (")


@pytest.mark.parametrize("clinical", [
    "Start amoxicillin 500 mg three times daily for 7 days.",
    "Give 0.5 mL/kg IV, then 10-20 mg/kg every 6 hours (max 4 g/day).",
    "BP 140/90 mmHg, HR 112, SpO2 94%, temperature 38.9 C.",
    "Na 140 mmol/L, K 4.1 mmol/L, creatinine 1.2 mg/dL, HbA1c 7.2%, platelets 150000/uL.",
    "A 72-year-old woman, age 45 at diagnosis, seen on 2024-03-01 and again 3/15/2024.",
    "ICD-10 I10; NDC codes are not patient identifiers; call 911 or go to the emergency department.",
    "See https://www.cdc.gov/bloodpressure/about.htm for patient education.",
    "Dose 2 x 10^9 cells; INR 2.5-3.5; 1 in 1000 patients.",
])
def test_clinical_content_is_kept(clinical):
    assert scrub(clinical) == clinical


@pytest.mark.parametrize("text, expected", [
    ("born on March 3, 1975 in Ohio", "[DOB] in Ohio"),
    ("date of birth 1980-01-02.", "[DOB]."),
    ("Patient ID: AB12345 admitted", "Patient ID: [ID] admitted"),  # the label stays, the number goes
    ("medical record number is 00123456", "medical record number is [ID]"),
    ("call 415-555-0199 tomorrow", "call [PHONE] tomorrow"),
    ("write to j.doe+clinic@mail.example.org", "write to [EMAIL]"),
    ("moved to 77 Sunset Blvd. last year", "moved to [ADDRESS] last year"),
    ("", ""),
])
def test_each_identifier_kind_gets_its_typed_placeholder(text, expected):
    assert scrub(text) == expected


# Each of these passed through unchanged before (issue 18, item 8).
@pytest.mark.parametrize("text, identifier", [
    ("Medical record no. 7781234 reviewed.", "7781234"),
    ("MRN #: A-99812, admitted", "99812"),
    ("MRN-556677 labs", "556677"),
    ("link used mrn=88231 today", "88231"),
    ("Patient #20931 called", "20931"),
    ("Encounter #E7733102 closed", "7733102"),
    ("Accession number S24-118392 shows", "118392"),
    ("Accession: 24-118392", "118392"),
    ("Medicare MBI 1EG4-TE5-MK73 on file", "MK73"),
    ("card shows 1EG4TE5MK73", "1EG4TE5MK73"),
    ("driver's licence no. D1234567 copied", "1234567"),
    ("license number CA-8812345", "8812345"),
    ("passport number X12345678 seen", "12345678"),
    ("SSN 123 45 6789 on the sheet", "6789"),
    ("written 123.45.6789 on the form", "6789"),
    ("social security no. 123456789 given", "123456789"),
    ("her DOB is 03/14/1962 and", "1962"),
    ("date of birth is July 4, 1976;", "1976"),
    ("DOB 14-Mar-1962, BP 150/95", "1962"),
    ("dob 19760704 gender F", "19760704"),
    ("reach her on 07911 123456 after six", "123456"),
    ("mobile: 07700 900123", "900123"),
    ("Discharged to 221B Baker Street, London", "221B Baker"),
    ("New address: 350 5th Ave, New York", "350 5th"),
    ("Mail to PO Box 4471, Springfield", "4471"),
    ("Springfield, IL 62704 is the town", "62704"),
    ("zip code 02114", "02114"),
    ("London NW1 6XE", "NW1 6XE"),
    ("device at 192.168.10.24 stopped", "192.168"),
    ("session from 2001:db8:85a3::8a2e:370:7334 dropped", "8a2e"),
    ("Patient John Smith has diabetes", "John Smith"),
    ("seen by Dr. Okafor today", "Okafor"),
])
def test_every_identifier_of_the_review_is_caught(text, identifier):
    cleaned = scrub(text)
    assert identifier not in cleaned, cleaned


# Issue 31, item 8: UK and Australian mobiles passed (07700 900123 even after the last review). The
# numbers here tune the phone matcher; data/phi/phones_heldout.txt measures it on numbers it was not tuned on.
@pytest.mark.parametrize("text, expected", [
    ("call 07700 900123 today", "call [PHONE] today"),
    ("ring +44 7700 900123 please", "ring [PHONE] please"),
    ("her number is 0412 345 678.", "her number is [PHONE]."),
    ("07700 900123", "[PHONE]"),
    ("son on 07700-900-555 or 0161 496 0000", "son on [PHONE] or [PHONE]"),
    ("abroad: 0044 7700 900789", "abroad: [PHONE]"),
    ("landline +44 (0)20 7946 0321", "landline [PHONE]"),
    ("texts from 0412345678 daily", "texts from [PHONE] daily"),
    ("home (03) 9654 1234, mobile +61 4 9157 0006", "home [PHONE], mobile [PHONE]"),
    ("US cell (212) 555-0133 or 212.555.0144", "US cell [PHONE] or [PHONE]"),
    ("in Canada +1 604 555 0155", "in Canada [PHONE]"),
    ("Dublin mobile 085 765 4321", "Dublin mobile [PHONE]"),
    ("Auckland, 027 555 1234", "Auckland, [PHONE]"),
    ("India 09987 654321 or +91 99876 54321", "India [PHONE] or [PHONE]"),
    ("in Lyon +33 4 12 34 56 78", "in Lyon [PHONE]"),
])
def test_uk_australian_and_international_phone_numbers_are_redacted(text, expected):
    assert scrub(text) == expected


# Safer must not mean useless: numbers a clinician writes that a phone matcher could take for one.
@pytest.mark.parametrize("clinical", [
    "Platelets 250000/uL, WBC 11200 per mm3, viral load 1200000 copies/mL, 12345678 copies.",
    "Heparin 10 000 units, then 1,000 mL over 8 hours; paracetamol 1 g 4 times a day for 14 days.",
    "Seen 12.03.2024 and 05.11.2024, obs every 4 h from 0800-2000; diabetic since 1998, review in 2025.",
    "BP 120/80, 118/76 and 142/90; INR 2.5-3.5; Hb 132 g/L; eGFR 45; pain 7/10; GCS 15/15.",
    "ICD-10 E11.9, I48.0 and J45.909; SNOMED CT 44054006; CPT 99214; LOINC 4548-4.",
    "Salbutamol 0.5 mg/kg, 0.25 mL then 0.125 mg; risk 1 in 10 000; 2 x 10^9 cells; 20240301 batch date.",
])
def test_clinical_numbers_are_not_taken_for_phone_numbers(clinical):
    assert scrub(clinical) == clinical


def test_a_record_number_stays_an_id_though_it_reads_as_a_mobile():
    assert scrub("MRN 0412345678 on file") == "MRN [ID] on file"


def test_precision_and_recall_on_the_labelled_corpus():
    notes = load_corpus()
    assert len(notes) >= 40
    scores = evaluate(notes)
    assert sum(scores.labelled.values()) >= 60 and scores.labelled["NAME"] >= 15
    assert scores.recall >= 0.95, scores.misses
    assert scores.caught["NAME"] / scores.labelled["NAME"] >= 0.9, scores.misses
    assert scores.precision >= 0.9, scores.false_positives
    assert scores.keep_kept == scores.keep_labelled, scores.lost_clinical  # doses, labs, ages all kept


def test_scrubbing_twice_changes_nothing_more_and_batches_agree():
    texts = [NOTE, "Dr. Okafor saw John Smith (MRN 4482) at 10:30.", "", "BP 140/90"]
    once = scrub_many(texts)
    assert scrub_many(once) == once  # the worker scrubs again what the bot already scrubbed
    assert once == [scrub(text) for text in texts]


def test_loading_the_name_recogniser_leaves_torch_to_other_threads():
    """While spaCy loads (torch refused to it, so the bot stays without torch), another thread's view
    of torch is untouched: scipy and sklearn look it up in sys.modules, and a training run in a
    worker crashed ("'NoneType' object has no attribute 'Tensor'") on the None entry that used to hide it.
    In a fresh interpreter, as a worker or the bot starts."""
    import subprocess
    import sys

    script = """
import sys, threading
from feedback import deidentify
seen, done = set(), threading.Event()
def watch():
    while not done.is_set():
        value = sys.modules.get("torch", 0)
        seen.add("absent" if value == 0 else type(value).__name__)
threading.Thread(target=watch, daemon=True).start()
deidentify.warm_up()
done.set()
assert deidentify.scrub("Seen by Maria Lopez today.") == "Seen by [NAME] today.", (
    deidentify.scrub("Seen by Maria Lopez today."))
print(sorted(seen), "torch" in sys.modules)
import torch
print("torch after", torch.__version__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    seen, after = result.stdout.splitlines()[:2]
    assert seen == "['absent'] False", f"another thread saw torch as {seen} (NoneType: hidden by a None entry)"
    assert after.startswith("torch after"), "torch imports normally once the recogniser is loaded"


def test_another_thread_imports_torch_while_the_name_recogniser_loads():
    """The bot loads its request screen (an embedding model, on torch) in one thread while the scrubber's
    recogniser loads in another: the screen failed with "No module named 'torch' (not loaded for the
    name recogniser)", and the first student's question waited 6 s for it. Torch is refused only to the
    thread loading spaCy. In a fresh interpreter, as the bot starts."""
    import subprocess
    import sys

    script = """
import sys, threading
from feedback import deidentify
result, done = {}, threading.Event()
def screen():
    while not any(type(f).__name__ == "_WithoutTorch" for f in sys.meta_path):
        if done.is_set():
            result["torch"] = "missed: the recogniser loaded before this thread looked"
            return
    try:
        import torch
        result["torch"] = torch.__version__
    except ImportError as exc:
        result["torch"] = f"refused: {exc}"
other = threading.Thread(target=screen)
other.start()
deidentify.warm_up()
done.set()
other.join()
print(result["torch"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not result.stdout.startswith(("refused", "missed")), result.stdout
