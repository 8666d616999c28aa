"""The grounded prompt (numbered passages, the instruction to cite them, the question last) and the
lexical check of whether an answer's cited passages hold its claims."""

from __future__ import annotations

from library.grounding import INSTRUCTION, citation_support, cited_numbers, grounded_messages
from library.index import Passage

PASSAGES = [Passage(1, "a", "Asthma: treatment", "NIH MedlinePlus", "https://medlineplus.gov/asthma.html",
                    "Inhaled corticosteroids reduce airway inflammation and prevent asthma attacks. " * 3, 1.0),
            Passage(2, "b", "Asthma: symptoms", "NIH NHLBI", "https://www.nhlbi.nih.gov/asthma",
                    "Wheezing, coughing and chest tightness are common asthma symptoms.", 0.9)]


def test_the_last_question_carries_the_numbered_passages_and_the_instruction():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": "How is asthma treated?"}]
    grounded = grounded_messages(history, PASSAGES, passage_chars=100)
    assert grounded[:2] == history[:2], "earlier turns are sent as they were"
    prompt = grounded[-1]["content"]
    assert prompt.startswith("Sources:\n[1] Asthma: treatment (NIH MedlinePlus): Inhaled corticosteroids")
    assert "\n\n[2] Asthma: symptoms (NIH NHLBI): Wheezing" in prompt
    assert prompt.endswith(f"{INSTRUCTION}\n\nQuestion: How is asthma treated?")
    first = prompt.split("\n\n")[0]
    assert len(first) < 100 + 60 and first.endswith("attacks."), "a long passage is cut at a sentence end"
    assert grounded_messages(history, [], passage_chars=100) == history, "no passages: the question alone"


def test_citations_and_their_lexical_support():
    assert cited_numbers("Steroids help [1]. Wheezing is common [2, 1]. See [3]") == [1, 2, 3]
    answer = ("Inhaled corticosteroids prevent asthma attacks [1]. Wheezing and coughing are symptoms [2]. "
              "Antibiotics cure asthma [1]. Drink water. Unknown source [7].")
    support = citation_support(answer, PASSAGES)
    assert (support.cited, support.supported) == (3, 2), "the antibiotics claim is not in passage 1"
    assert support.rate == 2 / 3
    assert citation_support("No citations here.", PASSAGES).rate is None
