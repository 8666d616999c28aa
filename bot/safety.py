"""What every answer carries: the educational-use notice, the not-for-clinical-use label, and a steer
to urgent care when a message reads like an emergency. The steer is shown by the page whatever the
model says, so a weak (or small) model cannot leave an emergency without it."""

from __future__ import annotations

import re

EDUCATIONAL_NOTICE = ("For medical education only: not medical advice, and not a substitute for a "
                      "clinician who knows the patient.")
# At the top of the chat page, before anything is asked: the standing notice, calm. The bold
# emergency steer (URGENT_CARE) goes above an answer only when the message reads like an emergency.
STANDING_NOTICE = EDUCATIONAL_NOTICE + " In an emergency, call your local emergency number, not this page."
# Shown beside the model's name when serving says its base model is unfit for clinical use (the
# offline default SmolLM2-135M-Instruct, the tiny test model): the API's `demo_model` flag.
DEMO_LABEL = ("not for clinical use: a small model for education and demonstration; "
              "its answers are not medically reliable")
URGENT_CARE = ("**If this is happening now, it may be an emergency.** Call your local emergency number "
               "(911 / 112 / 999) or go to the nearest emergency department. Do not wait for an answer here.")
CRISIS = ("**If you are thinking about ending your life or harming yourself, you are not alone.** Call your "
          "local emergency number now, or a crisis line (988 in the US, 116 123 in the UK and much of Europe).")

# Wording that should send someone to urgent care at once. Broad on purpose: a needless pointer
# costs a line; a missing one can cost a life.
_EMERGENCY = re.compile("|".join([
    r"chest (?:pain|tightness|pressure)", r"crushing (?:pain|chest)", r"heart attack",
    r"(?:can(?:no|')?t|cannot|unable to|struggling to|hard to) breathe?", r"short(?:ness)? of breath",
    r"not breathing", r"choking", r"throat (?:is )?(?:swelling|closing)", r"anaphyla",
    r"face (?:is )?droop", r"slurred speech|speech (?:is )?slurred", r"stroke", r"sudden (?:weakness|numbness)",
    r"worst headache", r"seizure", r"unconscious|unresponsive|passed out|won'?t wake",
    r"(?:heavy|severe|uncontrolled|won'?t stop) bleeding|bleeding (?:heavily|won'?t stop)",
    r"vomiting blood|coughing (?:up )?blood", r"overdose|took (?:a|the) (?:whole )?(?:bottle|pack)",
    r"poison(?:ed|ing)", r"(?:baby|newborn|infant).{0,40}fever|fever.{0,40}(?:baby|newborn|infant)",
    r"stiff neck.{0,40}fever|fever.{0,40}stiff neck", r"severe (?:belly|abdominal|stomach) pain",
    r"severe pain in (?:the |my |his |her )?(?:lower |upper )?(?:right |left )?(?:belly|abdomen|stomach)",
    r"collapsed|not responding|won'?t respond|won'?t wake", r"swallowed (?:a |an )?(?:button )?batter",
    r"\b(?:ate|swallowed|drank)\b.{0,30}\b(?:pods?|detergent|bleach)\b",
    r"sudden(?:ly)?.{0,30}(?:can'?t|cannot|unable to) (?:move|lift|feel|see|speak)",
    r"(?:lips|tongue|face|throat).{0,20}(?:swell|tight)", r"chest (?:feels )?tight",
    r"words (?:are )?jumbled|confused speech", r"droop", r"(?:lips|skin) (?:look |looks |are |is )?(?:blue|grey)",
    r"(?:newborn|baby|infant).{0,60}\b(?:hot|sleepy|floppy)\b", r"pregnan.{0,80}(?:headache|blurr|bleeding)",
    r"hit (?:his|her|my|their) head.{0,60}(?:confus|vomit)", r"(?:overheat|fever).{0,40}confus|confus.{0,40}fever",
    r"blood sugar.{0,60}breath", r"tearing (?:chest )?pain", r"tarry stool", r"(?:purple|non-?blanching) rash",
    r"rash that (?:does ?n[o']t|won'?t) fade", r"nosebleed.{0,40}(?:hour|won'?t stop)", r"sepsis",
]), re.IGNORECASE)
_CRISIS = re.compile(r"end(?:ing)? my life|kill(?:ing)? myself|suicid|self[- ]harm|hurt(?:ing)? myself|"
                     r"don'?t want to (?:live|be alive)", re.IGNORECASE)


def urgent_notice(message: str) -> str | None:
    """The pointer to show above the answer to ``message``, or None."""
    crisis = _CRISIS.search(message) is not None
    emergency = _EMERGENCY.search(message) is not None
    if crisis:
        return CRISIS + ("\n\n" + URGENT_CARE if emergency else "")
    return URGENT_CARE if emergency else None


def answer_footer(model: str, demo: bool) -> str:
    """The line under each answer: which version answered, whether it is unfit for clinical use, and the notice."""
    label = f"Answered by `{model}`" + (f" · **{DEMO_LABEL}**" if demo else "")
    return f"{label}\n\n_{EDUCATIONAL_NOTICE}_"
