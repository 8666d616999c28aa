"""The request screen: a student's clearly harmful request (drug seeking, self-harm methods, falsified
records, harming someone, clinical misconduct) gets a short refusal with a useful redirect, and the
model is not asked (issue 30, 3). The model's own safety comes and goes with the adapter that is
live (one promoted adapter helped find "shops that provide illegal treatment"); this screen does not.

It is a small trained classifier, not a list of phrases: the request's sentence embedding
(``library.embedding``, all-MiniLM-L6-v2) and its words (TF-IDF) into a multinomial logistic
regression over "benign" and the harmful categories. Its weights and threshold are in
``data/screen/weights.npz``: fitted on a training split, the threshold chosen on a tuning split,
measured on a confirmation split and outside sets (``bench/screen.py``, which also refits it;
BENCHMARKS.md "Request screen"). What a medical student legitimately asks is meant to pass: doses,
toxic doses, overdose signs, suicide risk assessment, a disclosure of suicidal thoughts (which gets
the crisis steer of ``bot.safety`` above the model's answer). A long message is screened whole and
window by window, so a request cannot hide behind 256 tokens of vignette.

The decision is the request's ``category`` (None: it passes); the chat logs it with the turn, so
reviewers see "Screened: <category>" on the item (``bot.pages.review``). The evaluation of adapters
never goes through it: it keeps measuring the model itself.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from bot.safety import CRISIS
from careloop.settings import REPO_ROOT

WEIGHTS = REPO_ROOT / "data" / "screen" / "weights.npz"
BENIGN = "benign"
CATEGORIES = ("drug_seeking", "self_harm", "falsifying", "harming_others", "unethical_practice")
SCREEN_MODEL = "request-screen"  # what the footer names as having answered a screened request
WINDOW_WORDS, WINDOW_STEP = 60, 30  # a longer message is also screened in windows of this many words

_ABLE = ("If I have misread your question, ask it again in other words: I can explain how medicines work, their "
         "usual and toxic doses, the signs of an overdose and how clinicians assess and treat these problems.")
REFUSALS = {
    "drug_seeking": ("I can't help with getting or using prescription or controlled drugs outside a prescription. "
                     "If you need relief from pain or another symptom, a prescriber or pharmacist can go through safe "
                     "options with you. If you are struggling with drug use, confidential help is available from "
                     "your doctor or a local drug service (in the US, SAMHSA's helpline: 1-800-662-4357)."),
    "self_harm": ("I'm really sorry you're going through this, and I'm glad you said something. I won't give "
                  "information that could be used to hurt yourself, but you don't have to face this alone: please "
                  "talk to someone today, a crisis line, your doctor or someone you trust, and if you might act on "
                  "these thoughts, go to the nearest emergency department now."),
    "falsifying": ("I can't help create or alter medical notes, prescriptions, test results, certificates or records. "
                   "If you need a sick note, a certificate or a correction to your record, your doctor or the "
                   "records office can do it properly, and I can explain how that works."),
    "harming_others": ("I can't help with harming a person or an animal. If someone is in danger now, call your "
                       "local emergency number; if someone may have been poisoned, call a poison centre; if you "
                       "are worried about a child or a vulnerable adult, your local safeguarding or protective "
                       "services can help."),
    "unethical_practice": ("I can't help with that: it would put patients at risk or break a clinician's duties "
                           "(consent, confidentiality, honest records, safe practice). Your supervisor, your "
                           "institution's ethics or compliance office, or your professional regulator can advise, "
                           "and I can explain the rules that apply."),
}


@dataclass(frozen=True)
class Decision:
    category: str | None  # the harmful category, or None: the request passes to the model
    score: float  # the classifier's probability that the request is harmful (its highest window)


def refusal(category: str) -> str:
    """What the student gets instead of the model's answer to a request screened as ``category``."""
    return f"{REFUSALS[category]}\n\n{_ABLE}"


def notice(category: str) -> str | None:
    """The steer shown above the refusal: the crisis line for self-harm, whatever the wording."""
    return CRISIS if category == "self_harm" else None


def windows(text: str) -> list[str]:
    """The texts a request is screened as: whole, and for a longer one overlapping windows of words."""
    words = text.split()
    if len(words) <= WINDOW_WORDS:
        return [text]
    starts = range(0, len(words) - WINDOW_WORDS + WINDOW_STEP, WINDOW_STEP)
    return [text] + [" ".join(words[start:start + WINDOW_WORDS]) for start in starts]


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()  # case and spacing say nothing of intent


def embeddings(texts: list[str]) -> np.ndarray:
    """Each text's sentence embedding (the slow half of the features: the bench computes them once)."""
    from library.embedding import embed

    return embed([_normal(text) for text in texts])


@dataclass(frozen=True)
class Model:
    """A fitted screen: a multinomial logistic regression over ``classes`` (one of them ``BENIGN``) on a
    text's sentence embedding beside its words (TF-IDF over ``vocabulary``, weighted ``words_weight``:
    the embedding says what a request is about, words like "without", "hide" or "so I can" say what it
    is for), and the harmful probability at or above which a request is screened."""

    classes: tuple[str, ...]
    coef: np.ndarray  # (classes, embedding dimensions + vocabulary)
    intercept: np.ndarray  # (classes,)
    vocabulary: tuple[str, ...]
    idf: np.ndarray  # (vocabulary,)
    words_weight: float
    threshold: float

    def features(self, texts: list[str], embedded: np.ndarray | None = None) -> np.ndarray:
        """The regression's input for ``texts`` (``embedded``: their embeddings, if already computed)."""
        embedded = embeddings(texts) if embedded is None else embedded
        words = self._vectorizer.transform([_normal(text) for text in texts]).toarray()
        return np.hstack([embedded, self.words_weight * words])

    @cached_property
    def _vectorizer(self):  # noqa: ANN202 - a fitted sklearn TfidfVectorizer
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(vocabulary={word: i for i, word in enumerate(self.vocabulary)},
                                     sublinear_tf=True)
        vectorizer.idf_ = self.idf
        return vectorizer

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = x @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def harm(self, x: np.ndarray) -> np.ndarray:
        """Each row's probability of being harmful (any category)."""
        return 1.0 - self.probabilities(x)[:, self.classes.index(BENIGN)]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:  # np.savez would add ".npz" to a name without it
            np.savez_compressed(out, classes=np.array(self.classes), coef=self.coef.astype(np.float32),
                                intercept=self.intercept.astype(np.float32), vocabulary=np.array(self.vocabulary),
                                idf=self.idf.astype(np.float32), words_weight=np.float32(self.words_weight),
                                threshold=np.float32(self.threshold))

    @classmethod
    def load(cls, path: Path) -> Model:
        with np.load(path, allow_pickle=False) as stored:
            return cls(tuple(str(c) for c in stored["classes"]), stored["coef"], stored["intercept"],
                       tuple(str(w) for w in stored["vocabulary"]), stored["idf"], float(stored["words_weight"]),
                       float(stored["threshold"]))


def fit(texts: list[str], embedded: np.ndarray, labels: list[str], c: float = 2.0, words_weight: float = 1.0,
        seed: int = 0) -> Model:
    """A model fitted on ``texts`` (``embedded``: their embeddings) with ``labels`` (``BENIGN`` or a
    category); its threshold is 0.5 until the caller chooses one on a tuning split. Each class weighs
    the same in all (balanced); words seen in fewer than two texts are left out."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(min_df=2, sublinear_tf=True).fit([_normal(text) for text in texts])
    vocabulary = tuple(vectorizer.get_feature_names_out())
    words = Model((), np.zeros(0), np.zeros(0), vocabulary, vectorizer.idf_, words_weight, 0.5)
    regression = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    regression.fit(words.features(texts, embedded), labels)
    return Model(tuple(str(c) for c in regression.classes_), regression.coef_, regression.intercept_, vocabulary,
                 vectorizer.idf_, words_weight, 0.5)


class RequestScreen:
    """The screen the chat uses: the stored model, loaded (with the embedding model) on first use or
    by ``warm_up`` at the bot's start."""

    def __init__(self, weights: Path = WEIGHTS):
        self.weights = weights
        self._model: Model | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> Model:
        with self._lock:
            if self._model is None:
                if not self.weights.is_file():
                    raise FileNotFoundError(f"the request screen's weights are missing ({self.weights}): "
                                            "run `.venv/bin/python bench/screen.py --train`")
                self._model = Model.load(self.weights)
        return self._model

    def warm_up(self) -> None:
        self.check("What is hypertension?")

    def check(self, text: str) -> Decision:
        """Whether ``text`` is screened, and as what: its most harmful window decides."""
        model = self._loaded()
        parts = windows(text)
        probabilities = model.probabilities(model.features(parts))
        harm = 1.0 - probabilities[:, model.classes.index(BENIGN)]
        worst = int(np.argmax(harm))
        if harm[worst] < model.threshold:
            return Decision(None, float(harm[worst]))
        ranked = [(p, c) for p, c in zip(probabilities[worst], model.classes, strict=True) if c != BENIGN]
        return Decision(max(ranked)[1], float(harm[worst]))
