"""Scrub protected health information out of report text before any token is scored.

Report headers carry names, record numbers, dates and the referring doctor; when those
happen to correlate with an error slice, a ranking of raw words puts them at the top. So
scrubbing happens before TF-IDF, in four layers:

1. header lines whose key names an identifier (``Patient:``, ``MRN:``, ``Referring physician:``…)
   are dropped whole;
2. e-mail addresses, URLs, titles with the names after them (``Dr. A. Smith``) and every run
   of characters holding a digit (dates, times, ids, accession numbers, measurements) are removed;
3. tokens are lower-case alphabetic words of three letters or more, not stop words, not
   de-identification placeholders (``XXXX``);
4. across the corpus, a word that occurs capitalised inside sentences and never in lower case
   is taken for a proper noun and dropped (a name), and a word must occur in ``min_df``
   studies to be scored at all (the vectoriser's job), so one patient's identifiers cannot rank.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

__all__ = ["STOP_WORDS", "ProperNouns", "scrub", "tokens"]

_ID_KEYS = (
    r"patient|name|mrn|medical\s+record|record\s+(?:no|number|#)|dob|date|birth|accession|acc\s*(?:no|#)?"
    r"|id|identifier|ssn|nhs|referr\w*|physician|doctor|attending|ordering|requested\s+by|signed|"
    r"dictated|transcribed|electronically|reported\s+by|radiologist|address|phone|tel|fax|email|"
    r"location|facility|hospital|institution|ward|room|bed|time|exam\s+date|study\s+date"
)
_HEADER = re.compile(rf"^[ \t]*(?:{_ID_KEYS})[^:\n]{{0,40}}:[^\n]*$", re.IGNORECASE | re.MULTILINE)
_EMAIL = re.compile(r"\S+@\S+")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_TITLE_NAME = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Sr|Nurse)\b\.?\s+(?:[A-Z][\w'’-]*\.?\s*){1,3}")
_WITH_DIGIT = re.compile(r"\S*\d\S*")
_WORD = re.compile(r"[A-Za-z]+")
_PLACEHOLDER = re.compile(r"^x{2,}$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?:;\n]\s*$")

#: English stop words plus report boilerplate that names no attribute of a case.
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | {
    "findings",
    "impression",
    "indication",
    "comparison",
    "technique",
    "history",
    "report",
    "exam",
    "examination",
    "study",
    "clinical",
    "noted",
    "seen",
    "there",
    "views",
    "view",
    "unchanged",
    "stable",
    "compared",
    "prior",
    "patient",
    "dictated",
    "signed",
    "final",
}


def scrub(text: str) -> str:
    """Remove identifier lines, addresses, names after titles and everything with a digit.

    >>> scrub("Patient: Jane Doe\\nMRN: 12345\\nFINDINGS: Chest tube in place, seen 12/03/2024 by Dr. Smith.")
    'FINDINGS: Chest tube in place, seen  by'
    """
    text = _HEADER.sub("", text)
    text = _EMAIL.sub(" ", text)
    text = _URL.sub(" ", text)
    text = _TITLE_NAME.sub("", text)
    text = _WITH_DIGIT.sub("", text)
    return text.strip()


def _words_with_position(text: str) -> Iterable[tuple[str, bool]]:
    """Words of ``text`` with whether each starts a sentence (where capitals prove nothing)."""
    start = 0
    for match in _WORD.finditer(text):
        before = text[start : match.start()]
        at_start = (start == 0 and not before.strip()) or bool(_SENTENCE_END.search(text[: match.start()]))
        yield match.group(), at_start
        start = match.end()


class ProperNouns:
    """Learns, from a corpus of mixed-case reports, the words used only as proper nouns.

    >>> pn = ProperNouns().fit(["The tube was placed by Smith today.", "Tube seen. Smith reviewed."])
    >>> sorted(pn.words_)
    ['smith']
    """

    def fit(self, texts: Iterable[str]) -> ProperNouns:
        capital_inside: Counter[str] = Counter()
        lower: Counter[str] = Counter()
        for text in texts:
            letters = [c for c in text if c.isalpha()]
            if not letters or sum(c.isupper() for c in letters) > 0.6 * len(letters):
                continue  # all-caps text says nothing about proper nouns
            for word, at_start in _words_with_position(text):
                if word.islower():
                    lower[word] += 1
                elif word[0].isupper() and word[1:].islower() and not at_start:
                    capital_inside[word.lower()] += 1
        self.words_ = frozenset(w for w in capital_inside if lower[w] == 0)
        return self


def tokens(text: str, proper_nouns: frozenset[str] = frozenset()) -> list[str]:
    """Scrubbed lower-case tokens of one text, ready for TF-IDF.

    >>> tokens("MRN: 998877\\nLeft chest tube; 2 lines. Reviewed by Dr. Who on 2024-01-02.")
    ['left', 'chest', 'tube', 'lines', 'reviewed']
    """
    out = []
    for word in _WORD.findall(scrub(text)):
        low = word.lower()
        if len(low) < 3 or low in STOP_WORDS or _PLACEHOLDER.match(low) or low in proper_nouns:
            continue
        out.append(low)
    return out
